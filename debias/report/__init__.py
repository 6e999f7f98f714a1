"""The self-contained HTML report, rendered only from the results (and cached images) in run folders.

Three kinds, chosen from the folders given:

* one audit folder (``audit.json``)            -> ``audit``: shares per profession, one run;
* one fix folder (``fix.json`` + before/after) -> ``fix``: before/after of the edit, strengths per round, side effects;
* two audit folders (first before, then after) -> ``compare``.

Nothing here generates an image or loads a model, so a report can be rebuilt anywhere from a copied run
folder. The report reads :class:`~debias.results.records.AuditResult` / :class:`~debias.results.records.FixResult` and
recomputes none of their figures. Every number the page shows is in the ``report.json`` twin written beside
the HTML, under the results' names; the twin adds only descriptions of them (typical precision, the
conclusion). Modules: ``runs`` (finding and reading), ``rows`` (one row per profession), ``summary`` (headline,
warnings, method), ``validity`` (human labels and other classifiers), ``attributes`` (attributes beyond gender
and their intersections, where an audit read them), ``samples`` (images), ``figures`` (charts), ``render`` (the
page and its twins), ``build``.

Human labels added after a run (``debias label``) reach the page through the results: before rendering,
:func:`render_report` recomputes each audit's ``validity`` block from the labels in its folder and records it in
``audit.json`` (:func:`debias.results.validity.refresh_validity`); the page then shows what the results hold.
"""

from debias.report.build import build_report, render_report
from debias.report.card import bias_section, model_card, write_model_card
from debias.report.render import STATUS_TEXT, markdown_path, render_html, twin_paths
from debias.report.samples import thumbnail

__all__ = ["STATUS_TEXT", "bias_section", "build_report", "markdown_path", "model_card", "render_html", "render_report",
           "thumbnail", "twin_paths", "write_model_card"]
