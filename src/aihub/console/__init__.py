"""The web console: a static single-page application the gateway serves at ``/console/``."""
