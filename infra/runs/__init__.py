"""The life of a run, shared by the web app, the worker and the sweeper.

lifecycle.py   statuses, stages, allowed transitions, progress weights, and `transition()`: the one
               way a run's status changes (conditional UPDATE + its event, one transaction)
repository.py  the queries of the execution side (the worker running a run, the sweeper)

May import: infra.db, infra.events.
"""
