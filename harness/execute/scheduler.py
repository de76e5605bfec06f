"""The scheduling policy of a run, with no Ray in it: what to submit next, and what a finished piece of work
changes. The Ray adapter (:mod:`harness.execute.runner`) turns each submission into a remote call and reports
each finished call back; the policy is unit-tested by driving it by hand (``tests/harness/test_scheduler.py``).

Policy:

* learn first: every concept's learning (the long work) is submitted before any task job, so the end of a
  run is short task jobs filling the slots instead of one last learn running alone (a list schedule's tail is
  as long as its last job). A concept's task jobs become ready when it is learned;
* bounded: at most ``max_in_flight`` learns and task jobs run at once, and a task job is submitted only while
  fewer than ``max_in_flight`` task outputs run or wait for the metric actor, so a slow scorer holds back new
  jobs instead of letting outputs pile up (members held for a group metric do not count: a group larger than
  the bound would never finish);
* outputs finished together are scored as one batch; a batch the scorer refuses is split into single jobs,
  so only the job whose sample a metric refused fails;
* a group is scored once every member has an ok result, in this run or an earlier one (resume);
* out of memory is retried with more room (:func:`larger_packing`): a GPU fraction becomes a whole GPU, a CPU job
  twice the CPUs (fewer jobs share a node's memory), up to the suite's ``max_retries``.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass

from ..groups import GroupKey
from ..plan.jobs import TaskJob
from ..store import STATUS_FAILED


@dataclass(frozen=True)
class Learn:
    concept_id: str


@dataclass(frozen=True)
class RunTask:
    job: TaskJob


@dataclass(frozen=True)
class Score:
    """Score the outputs of these jobs (one batch)."""

    jobs: tuple[TaskJob, ...]


@dataclass(frozen=True)
class ScoreGroup:
    key: GroupKey
    members: tuple[TaskJob, ...]  # sorted by job id


Submission = Learn | RunTask | Score | ScoreGroup


def larger_packing(options: Mapping[str, float], node_cpus: float) -> dict[str, float]:
    """The Ray resources of a job's retry after it ran out of memory: a fraction of a GPU becomes a whole GPU
    (nothing else on it); whole GPUs stay (another GPU may have room); a CPU job takes twice the CPUs, at most a
    node's, so fewer jobs share that node's memory."""
    num_gpus, num_cpus = float(options.get("num_gpus") or 0), float(options.get("num_cpus") or 1)
    if 0 < num_gpus < 1:
        return {"num_gpus": 1.0, "num_cpus": num_cpus}
    if num_gpus == 0:
        return {"num_gpus": 0.0, "num_cpus": max(num_cpus, min(2 * num_cpus, node_cpus))}
    return {"num_gpus": num_gpus, "num_cpus": num_cpus}


def packing_text(options: Mapping[str, float]) -> str:
    """``num_gpus 0.5`` or ``num_cpus 2``: what a job asked of its node."""
    num_gpus = float(options.get("num_gpus") or 0)
    return f"num_gpus {num_gpus:g}" if num_gpus else f"num_cpus {float(options.get('num_cpus') or 1):g}"


def jobs_to_run(jobs: Sequence[TaskJob], statuses: Mapping[str, str], retry_failed: bool = False) -> list[TaskJob]:
    """The jobs a run still has to do: those without a result (and, with ``retry_failed``, the failed ones)."""
    return [
        job for job in jobs if job.job_id not in statuses or (retry_failed and statuses[job.job_id] == STATUS_FAILED)
    ]


class Scheduler:
    """The state of one run's scheduling: which concepts are waiting, learning or learned; which jobs are
    ready, running or being scored; which groups are complete.

    ``jobs`` are the task jobs still to run, in graph order; ``groups`` maps each group still to be scored
    (its values not yet written) to its member jobs; ``ok_jobs`` are job ids with an ok result from an
    earlier run; ``scores_jobs`` is False when the run has no per-job metric (outputs are then done when
    their task finishes).
    """

    def __init__(
        self,
        jobs: Sequence[TaskJob],
        max_in_flight: int,
        groups: Mapping[GroupKey, Sequence[TaskJob]] | None = None,
        ok_jobs: Iterable[str] = (),
        scores_jobs: bool = True,
    ) -> None:
        if max_in_flight < 1:
            raise ValueError(f"max_in_flight must be at least 1, got {max_in_flight}")
        self.max_in_flight = max_in_flight
        self.scores_jobs = scores_jobs
        self.waiting: dict[str, list[TaskJob]] = {}  # concept id -> its jobs, in graph order
        for job in jobs:
            self.waiting.setdefault(job.concept_id, []).append(job)
        self.to_learn: deque[str] = deque(self.waiting)  # concepts in order of first appearance
        self.concepts_total = len(self.to_learn)
        self.learning: set[str] = set()
        self.learned: set[str] = set()
        self.ready: deque[TaskJob] = deque()  # jobs whose concept is learned, not yet submitted
        self.running: set[str] = set()  # task jobs submitted, not finished
        self.to_score: list[TaskJob] = []  # finished outputs not yet submitted for scoring
        self.split: deque[TaskJob] = deque()  # jobs of a refused batch, to be scored one by one
        self.scoring: list[Score] = []  # batches submitted, not finished
        self.groups = {
            key: tuple(sorted(members, key=lambda job: job.job_id)) for key, members in (groups or {}).items()
        }
        self.groups_submitted: set[GroupKey] = set()
        self.groups_scoring: set[GroupKey] = set()
        self.ok_jobs: set[str] = set(ok_jobs)
        self.peak_running = 0

    # ------------------------------------------------------------------------------------------ queries
    @property
    def awaiting_scores(self) -> int:
        """Task outputs submitted for scoring or about to be."""
        return sum(len(batch.jobs) for batch in self.scoring) + len(self.to_score) + len(self.split)

    @property
    def busy(self) -> bool:
        """Whether anything is submitted and not finished, or still to be submitted."""
        return bool(
            self.learning
            or self.running
            or self.scoring
            or self.groups_scoring
            or self.to_score
            or self.split
            or self.to_learn
            or self.ready
        )

    def group_complete(self, key: GroupKey) -> bool:
        return key not in self.groups_submitted and all(job.job_id in self.ok_jobs for job in self.groups[key])

    # ------------------------------------------------------------------------------------------ policy
    def next_submissions(self) -> list[Submission]:
        """Everything to submit now, in order; each is counted as in flight until :meth:`on_finished`."""
        out: list[Submission] = []
        for key in self.groups:
            if self.group_complete(key):
                self.groups_submitted.add(key)
                self.groups_scoring.add(key)
                out.append(ScoreGroup(key, self.groups[key]))
        if self.to_score:
            batch = Score(tuple(self.to_score))
            self.to_score = []
            self.scoring.append(batch)
            out.append(batch)
        while self.split:
            batch = Score((self.split.popleft(),))
            self.scoring.append(batch)
            out.append(batch)
        while len(self.learning) + len(self.running) < self.max_in_flight:
            if self.to_learn:
                concept_id = self.to_learn.popleft()
                self.learning.add(concept_id)
                out.append(Learn(concept_id))
            elif self.ready and len(self.running) + self.awaiting_scores < self.max_in_flight:
                job = self.ready.popleft()
                self.running.add(job.job_id)
                out.append(RunTask(job))
            else:
                break
        self.peak_running = max(self.peak_running, len(self.running))
        return out

    def on_finished(self, submission: Submission, ok: bool) -> list[TaskJob]:
        """Record that ``submission`` finished (``ok`` or failed). Returns the jobs that are done now — ok
        jobs when ``ok`` — or that failed because of it (every job of a concept that could not be learned)."""
        if isinstance(submission, Learn):
            self.learning.discard(submission.concept_id)
            jobs = self.waiting.pop(submission.concept_id, [])
            if not ok:
                return jobs
            self.learned.add(submission.concept_id)
            self.ready.extend(jobs)
            return []
        if isinstance(submission, RunTask):
            job = submission.job
            self.running.discard(job.job_id)
            if ok and self.scores_jobs:
                self.to_score.append(job)  # done once scored
                return []
            return self._done([job], ok)
        if isinstance(submission, Score):
            self.scoring.remove(submission)
            if not ok and len(submission.jobs) > 1:  # find which sample a metric refused
                self.split.extend(submission.jobs)
                return []
            return self._done(list(submission.jobs), ok)
        self.groups_scoring.discard(submission.key)
        return []

    def _done(self, jobs: list[TaskJob], ok: bool) -> list[TaskJob]:
        if ok:
            self.ok_jobs.update(job.job_id for job in jobs)
        return jobs
