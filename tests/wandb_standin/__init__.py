"""A loopback W&B stand-in that keeps state, for the real wandb 0.31 SDK (Python and its Go `wandb-core`) online.

No W&B server can run here, so tests (and anyone, `python -m tests.wandb_standin`) get this test double, the way
boto users have moto. It speaks the part of W&B's protocol this project's W&B code uses, keeps what it is sent, and
answers W&B's queries about it, so what a run logged can be read back with `wandb.Api()`.

What it models, with W&B's rules:
- projects (created on first use) and runs: `UpsertBucket` (config, group, job type, tags, summary), the file
  stream (history lines at their offsets, the summary, the exit code: `finished` on 0, else `failed`), run files
  (`CreateRunFiles` upload URLs and a PUT sink), resuming (`RunResumeStatus`: a run is resumable once its config
  holds wandb's `_wandb.t`, as wandb-core checks), `wandb.Api().run(...)`;
- artifact types and sequences (created by the first `CreateArtifact`; a name keeps its first type), versions
  (`CreateArtifact` de-duplicates on the digest inside a sequence: the same content is the same version, its
  aliases are added; a pending version of that digest is handed back for its upload to finish), the manifest upload,
  `CreateArtifactFiles` (content-addressed storage: no upload URL for bytes it already holds, an upload whose MD5 is
  not its name is refused), `CommitArtifact` (refused while the manifest or a file is missing), file and manifest
  downloads;
- aliases: an alias names one version of a collection and moves when set on another; `latest` is the newest
  committed version and `vN` the Nth, both derived, never stored; aliases of a pending version apply at commit;
- `UseArtifact` input edges (a run's inputs, an artifact's `usedBy`), a version's producer (`createdBy`, a run's
  outputs, recorded at commit), `LinkArtifact` into a portfolio (registry projects `wandb-registry-*` of the one
  organization `standin-org` are created on first link; a version keeps one index per portfolio, links are
  idempotent), `AddAliases` / `DeleteAliases` / `UpdateArtifact` (description, metadata, aliases);
- what a user browses (`browse.py`): `wandb.Api().runs(path, filters=..., order=...)` (W&B's MongoDB-style
  filters on run fields, `config.KEY`, `summary_metrics.KEY`; pages by cursor; `runCount`), a run's config and
  summary, `run.history()` (full, by keys, `samples`), `run.scan_history()` (wandb-core's `RunParquetHistory`,
  `HistoryPage`, `SampledHistoryPage`: every row live, no parquet export), `historyKeys` (`lastStep`),
  `api.artifact_types()`, `ArtifactType.collections()`, `api.artifact_collections()`; the history is the rows the
  file stream delivered, at their offsets (a resumed run appends);
- an API key (`api_key`, generated unless given): GraphQL and the file stream without it get HTTP 401.

What it does not model: permissions, teams, organizations beyond one, service accounts; TTL (every version says
ttlDurationSeconds -1), deletion, tags, storage policies and regions, multipart uploads, reference artifacts' bytes,
artifact-file de-duplication across manifests beyond MD5, incremental manifests, client-id mapping, sweeps,
launch, reports, console logs, system metrics (the events stream is kept, not computed), W&B's own history sampling
(the stand-in samples evenly, the first and last row kept), parquet history exports, filtering or ordering artifact
collections, paging cursors beyond offsets, rate limits (429 only by fault), and the speed or size limits of W&B. An operation it does not implement gets a GraphQL error
naming it; a field it does not know comes back null and is listed in `missing_fields`; a runs filter or order it does
not know is a GraphQL error naming it. Answers are checked (`validate.py`) against wandb's generated models, or, for
the queries the SDK writes by hand (`SCHEMA_CHECKED`, `Run`), against the generated fragments they spread and a
partial W&B schema (`validate.SCHEMA`).

Faults by operation name (`w.fail("CommitArtifact", "http-500", nth=2)`, `w.fail("UseArtifact", "hang")`,
`w.fail(ANY, "http-401")`, `AFTER_INIT` for every operation but what `wandb.init` needs); also over HTTP
(`POST /_standin/faults` with the same fields as JSON, `DELETE /_standin/faults`). Non-GraphQL requests have the
names `file_stream`, `upload` (every PUT) and `download` (every GET of a file). `w.count(op)` counts requests per
operation (`GET /_standin/requests`); `w.state()` / `GET /_standin/state` is what it holds, as JSON.

Loopback only (127.0.0.1), an ephemeral port by default, bounded request bodies, storage (`max_bytes`), history
lines, request log, and hangs (`hang_s`); every request is handled on a daemon thread. Use it as a context manager
or through the `wandb_standin` fixture in tests/conftest.py.
"""

from tests.wandb_standin.server import (
    AFTER_INIT,
    ANY,
    API_KEY,
    IMPLEMENTED,
    INIT_OPERATIONS,
    KINDS,
    SCHEMA_CHECKED,
    Fault,
    SilentServer,
    Standin,
    closed_port,
    failing,
)

__all__ = ["AFTER_INIT", "ANY", "API_KEY", "IMPLEMENTED", "INIT_OPERATIONS", "KINDS", "SCHEMA_CHECKED", "Fault",
           "SilentServer", "Standin", "closed_port", "failing"]
