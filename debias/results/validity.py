"""The validity block of an audit folder refreshed from its labels (``debias report`` does this before it renders).

The block itself is :func:`debias.validity.record.validity_block`; this module only reads and rewrites the folder's
``audit.json`` around it, which is why it sits with the results rather than with the label tools below them.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

from debias.core.errors import InputError
from debias.results.records import AuditResult
from debias.validity.record import validity_block


def refresh_validity(run_dir: str | os.PathLike, result: AuditResult | None = None) -> AuditResult:
    """Recompute the validity block of the audit in ``run_dir`` from its labels; rewrite ``audit.json`` if it
    changed. ``result`` is the folder's :class:`~debias.results.records.AuditResult` when the caller has read it already.
    Returns the (possibly updated) result. Nothing is generated."""
    run_dir = Path(run_dir)
    result = result if result is not None else AuditResult.from_json(run_dir)
    if not any(row.samples for row in result.professions):
        return result  # nothing a person could label
    block = json.loads(json.dumps(validity_block(run_dir, result.to_dict())))  # as read back from the file
    if block != result.validity:
        result.validity = block
        try:
            result.save(run_dir)
        except OSError as err:
            raise InputError(f"{run_dir}/audit.json: cannot record the labels' validity ({err.strerror}); copy the "
                             "run folder somewhere writable and run debias report there.") from None
    return result
