"""Several searches at once, their decodes batched: one thread per search, run in lockstep.

A tree search decodes a few nodes at a time; at batch 1 or 2 a CPU (or a GPU) spends most of a
decode step on per-step overhead. Running the searches of several problems side by side turns
their decodes into one batch. Each search keeps its own sequential code: it runs in a thread that
holds the turn until its next decode call; the jobs take turns in job order, and once every
unfinished job waits on a decode, the waiting calls run together and each job gets its own answer.
One thread runs at a time, in a fixed order, so the outcome never depends on the threads' timing
(and sharded ranks issue their collectives in the same order).
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any


class Lockstep:
    """Runs jobs in lockstep threads and executes their waiting requests in batches.

    Args:
        execute: takes the waiting requests (in job order) and returns one result per request.
    """

    def __init__(self, execute: Callable[[list[Any]], list[Any]]) -> None:
        self.execute = execute
        self._turn = threading.Condition()
        self._local = threading.local()
        self._holder: int | None = None  # the job whose turn it is
        self._waiting: dict[int, Any] = {}
        self._answers: dict[int, Any] = {}
        self._done: list[bool] = []

    def run(self, jobs: list[Callable[[], Any]]) -> list[Any]:
        """Each job's return value; the first job that raised re-raises here."""
        results: list[Any] = [None] * len(jobs)
        errors: list[BaseException | None] = [None] * len(jobs)
        self._done = [False] * len(jobs)
        threads = [
            threading.Thread(target=self._work, args=(i, job, results, errors), daemon=True)
            for i, job in enumerate(jobs)
        ]
        for thread in threads:
            thread.start()
        with self._turn:
            while True:
                for index in [i for i, done in enumerate(self._done) if not done]:
                    self._pass_turn(index)
                live = [i for i, done in enumerate(self._done) if not done]
                if not live:
                    break
                requests = [self._waiting.pop(i) for i in live]
                try:
                    answers = self.execute(requests)
                except BaseException as error:  # handed to every waiting job, which raises it
                    answers = [error] * len(live)
                self._answers.update(zip(live, answers, strict=True))
        for thread in threads:
            thread.join()
        for error in errors:
            if error is not None:
                raise error
        return results

    def submit(self, request: Any) -> Any:
        """Called from a job: hands back the turn, then returns the request's batched result."""
        index = self._local.index
        with self._turn:
            self._waiting[index] = request
            self._holder = None
            self._turn.notify_all()
            self._turn.wait_for(lambda: self._holder == index)
            answer = self._answers.pop(index)
        if isinstance(answer, BaseException):
            raise answer
        return answer

    def _pass_turn(self, index: int) -> None:
        """Lets job `index` run until it waits on a decode or ends (the lock is held)."""
        self._holder = index
        self._turn.notify_all()
        self._turn.wait_for(lambda: self._holder is None)

    def _work(self, index: int, job, results: list, errors: list) -> None:
        self._local.index = index
        with self._turn:
            self._turn.wait_for(lambda: self._holder == index)
        try:
            results[index] = job()
        except BaseException as error:
            errors[index] = error
        finally:
            with self._turn:
                self._done[index] = True
                self._holder = None
                self._turn.notify_all()
