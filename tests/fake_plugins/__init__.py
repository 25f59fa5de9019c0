"""Plugins that misbehave on purpose, to prove one bad plugin never takes the others down."""
