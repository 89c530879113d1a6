"""The cloud tier: a Ray Serve application hosting larger compressed models."""
