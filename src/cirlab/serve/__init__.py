"""The search service: an HTTP API over a trained pipeline and its index, and the web page."""
