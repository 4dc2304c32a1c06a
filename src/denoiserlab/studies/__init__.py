"""Studies: whole experiments that chain dataset -> denoisers -> samplers/evaluators -> results.json -> report."""
