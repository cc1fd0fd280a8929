"""Observability: what operators scrape and read about a running relay."""
