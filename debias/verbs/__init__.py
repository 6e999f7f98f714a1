"""The verbs of the Python API, the top of the library: :func:`debias.audit` (:mod:`.audit`), :func:`debias.fix`
(:mod:`.fix`) and :func:`debias.edit` (:mod:`.edit`); ``debias report`` is :func:`debias.report.render_report` and
``debias label`` is :func:`debias.validity.server.serve`. Nothing below this package imports it."""
