"""The web dashboard served by ``crucible serve`` at ``/``.

Pages are server-rendered Jinja2 *shells*: they carry no job data and no
secret, only the page kind and the ids in the URL (autoescaped). The page's
JavaScript (``static/dashboard.js``, plain ``fetch``, and the vendored uPlot
for charts) fetches everything through the API with the token the user
entered once per browser session (``sessionStorage``, sent as
``Authorization: Bearer``, never in a URL). Why shells: a browser navigation
cannot send an ``Authorization`` header, so a server-rendered page with data
would need a cookie (and then CSRF defences) or a token in the URL (which
leaks into logs and history). With shells the API's own checks (tenant,
scopes, rate limit) guard every byte of data, and a page is useless without a
token.

The JSON the pages need beyond ``/v1`` (jobs with progress, metric series,
sha256 of artifacts, config diffs, models, experiments) is under
``/ui/api/`` with the same bearer tokens and tenant rules; those routes are
not part of the public API and are left out of ``/openapi.json``.
"""

from __future__ import annotations

from crucible_server.dashboard.routes import mount_dashboard

__all__ = ["mount_dashboard"]
