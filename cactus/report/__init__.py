"""Run reports: figures (``figures``), the HTML page (``html``), what they show (``collect``), ``build``."""
