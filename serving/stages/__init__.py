"""The flow's stages, one module and one job each (docs/architecture.md, "One request").

A stage module has ``run(ctx)``: a plain function when it blocks (database,
tokenizer; consecutive ones run in one trip to the thread pool) or a
coroutine when it waits on I/O. Which stages run, in which order, is a
setting (``TOLLGATE_CHAT_STAGES``, ``TOLLGATE_EMBEDDINGS_STAGES``). Settling
and responding close every flow and are not in those lists: settlement must
happen exactly once, whatever a stage did.
"""
