"""Running heavy work for a hosted app: where code runs, apart from what it computes.

- `admission` the process-wide gate for heavy jobs (a queue, cancellation)
- `jobs`      the heavy analyses as picklable job descriptions
- `worker`    worker processes that run jobs with their own GIL, progress relayed, stops honoured

Layer 4: may import everything below (corpus, analyses, engine, leaves); never the entry points (cli, reproduce).
"""
