"""Ranking: transferability scores of frozen features, and the order in which candidate backbones are tried."""
