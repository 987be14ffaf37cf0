"""Pulumi components, one room per tier. Each creates its tier's resources from rendered files."""
