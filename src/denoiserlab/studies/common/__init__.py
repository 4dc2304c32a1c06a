"""Plumbing both studies share: stage cache, config checks, inputs, the registry-driven methods, results."""
