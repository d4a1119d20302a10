"""dnsotel's Grafana dashboards and Prometheus alert rules, as code.

``python -m grafana.build`` (``make dashboards``) regenerates every file under
``grafana/dashboards/``, ``grafana/alerts/`` and ``deploy/kubernetes/monitoring/``.
"""

from __future__ import annotations
