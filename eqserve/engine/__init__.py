"""The engine of one served model, in three parts (vLLM v1's schedule → execute → update).

- `scheduler.py` (pure Python): the waiting queue, the rows in their slots, admission, compaction,
  deadlines, cancellation, the batching policy and how many steps the next run takes;
- `batch.py`: the tensors of the active rows, their solver state and the batch context;
- `runner.py`: runs up to k steps of the batch and decides each row's stop rule every step;

and `core.py`, the worker that loops over them. `job.py` holds what crosses the parts: a request's
job, its result and the watch that sees its iterates.
"""
