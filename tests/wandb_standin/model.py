"""What the stand-in holds (projects, runs, artifact types, collections, versions, aliases, edges, blobs) and the
GraphQL objects it shows of them. All state is plain JSON in `self.data` (dumped as is); blob bytes live in memory
or under `--state DIR/objects`. Callers hold `self.lock` around `query`/`mutate` (the server does).
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import time
from pathlib import Path
from typing import Any

from tests.wandb_standin import browse
from tests.wandb_standin.executor import GraphQLFailure

ORG = "standin-org"
REGISTRY_PREFIX = "wandb-registry-"
MAX_HISTORY_LINES = 10_000
FEATURES = ("ARTIFACT_TAGS", "PROJECT_ARTIFACT_COLLECTION_MEMBERSHIP", "ARTIFACT_MEMBERSHIP_IN_LINK_ARTIFACT_RESPONSE",
            "ARTIFACT_COLLECTION_MEMBERSHIP_FILES", "TOTAL_COUNT_IN_FILE_CONNECTION", "ARTIFACT_DIGEST_ALGORITHM",
            "USE_ARTIFACT_WITH_ENTITY_AND_PROJECT_INFORMATION")


def gid(kind: str, n: int | str) -> str:
    """W&B's opaque ids: base64 of `Type:number` (the SDK passes them back as they are)."""
    return base64.b64encode(f"{kind}:{n}".encode()).decode()


def now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime())


class StorageFull(Exception):
    pass


class Blobs:
    """Content-addressed bytes (by md5 hex, as W&B's storage layout V2 is), bounded in total."""

    def __init__(self, root: Path | None, max_bytes: int):
        self.root, self.max_bytes, self.mem = root, max_bytes, {}
        self.used = sum(p.stat().st_size for p in root.iterdir()) if root and root.is_dir() else 0

    def put(self, key: str, data: bytes) -> None:
        if self.has(key):
            return
        if self.used + len(data) > self.max_bytes:
            raise StorageFull(f"stand-in storage full ({self.max_bytes} bytes)")
        self.used += len(data)
        if self.root is None:
            self.mem[key] = data
        else:
            self.root.mkdir(parents=True, exist_ok=True)
            tmp = self.root / f".{key}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, self.root / key)

    def get(self, key: str) -> bytes | None:
        if self.root is None:
            return self.mem.get(key)
        p = self.root / key
        return p.read_bytes() if p.is_file() else None

    def has(self, key: str) -> bool:
        return key in self.mem if self.root is None else (self.root / key).is_file()


def b64_to_hex(b64md5: str) -> str:
    return base64.b64decode(b64md5).hex()


class Model:
    def __init__(self, url: str, entity: str, state_dir: Path | None = None, max_bytes: int = 1 << 30):
        self.url, self.entity, self.state_dir = url, entity, state_dir
        self.blobs = Blobs(state_dir / "objects" if state_dir else None, max_bytes)
        self.data: dict[str, Any] = {"entity": entity, "seq": 0, "projects": {}, "runs": {}, "types": {},
                                     "collections": {}, "artifacts": {}, "run_files": {}, "manifests": {}}
        if state_dir and (state_dir / "state.json").is_file():
            self.data = json.loads((state_dir / "state.json").read_text())

    # ---------------------------------------------------------------------------------------- persistence
    def save(self) -> None:
        if self.state_dir is None:
            return
        self.state_dir.mkdir(parents=True, exist_ok=True)
        tmp = self.state_dir / ".state.json.tmp"
        tmp.write_text(json.dumps(self.data, indent=1, sort_keys=True))
        os.replace(tmp, self.state_dir / "state.json")

    def _next(self) -> int:
        self.data["seq"] += 1
        return self.data["seq"]

    # ---------------------------------------------------------------------------------------- lookups
    def project(self, entity: str | None, name: str | None, create: bool = False) -> dict | None:
        entity, name = entity or self.entity, name or "uncategorized"
        key = f"{entity}/{name}"
        p = self.data["projects"].get(key)
        if p is None and create:
            num = self._next()
            p = self.data["projects"][key] = {"id": gid("Project", num), "num": num, "entity": entity,
                                              "name": name, "created": now()}
        return p

    def run(self, entity: str | None, project: str | None, name: str) -> dict | None:
        return self.data["runs"].get(f"{entity or self.entity}/{project or 'uncategorized'}/{name}")

    def collection(self, entity: str, project: str, name: str, kind: str | None = None) -> dict | None:
        for c in self.data["collections"].values():
            if (c["entity"], c["project"], c["name"]) == (entity, project, name) and kind in (None, c["kind"]):
                return c
        return None

    def artifact(self, aid: str) -> dict:
        a = self.data["artifacts"].get(aid)
        if a is None:
            raise GraphQLFailure(f"artifact {aid} not found")
        return a

    def resolve_alias(self, c: dict, alias: str) -> str | None:
        members = c["members"]
        if alias == "latest":
            done = [m for m in members if self.data["artifacts"][m]["state"] == "COMMITTED"]
            return done[-1] if done else None
        if alias[:1] == "v" and alias[1:].isdigit():
            i = int(alias[1:])
            return members[i] if i < len(members) else None
        return c["aliases"].get(alias)

    def set_alias(self, c: dict, alias: str, aid: str) -> None:
        """An alias names one version of a collection: setting it on another moves it. `latest` and `vN` are
        derived, never stored."""
        if alias == "latest" or (alias[:1] == "v" and alias[1:].isdigit()):
            return
        if len(alias) > 128:
            raise GraphQLFailure(f"alias {alias[:20]}... is longer than 128 characters")
        c["aliases"][alias] = aid

    # ---------------------------------------------------------------------------------------- views
    def v_entity(self, name: str | None) -> dict:
        name = name or self.entity
        org = {"__typename": "Organization", "name": ORG, "orgEntity": {"__typename": "Entity", "name": ORG},
               "featureFlags": lambda **_: []}
        return {"__typename": "Entity", "id": gid("Entity", name), "name": name, "xxhashDigestsEnabled": False,
                "organization": None if name == ORG else org, "user": {"organizations": [org]},
                "isTeam": False}

    def v_project(self, p: dict | None) -> dict | None:
        if p is None:
            return None
        e, n = p["entity"], p["name"]
        return {"__typename": "Project", "id": p["id"], "internalId": str(p["num"]), "name": n, "entityName": e,
                "readOnly": False, "createdAt": p["created"],
                "entity": lambda **_: self.v_entity(e),
                "run": lambda name, **_: self.v_run(self.run(e, n, name)),
                "bucket": lambda name, **_: self.v_run(self.run(e, n, name)),
                "artifactType": lambda name, **_: self.v_type(e, n, name),
                "artifactCollection": lambda name, **_: self.v_collection(self.collection(e, n, name)),
                "artifactCollectionMembership": lambda name, **_: self._membership_by_name(e, n, name),
                "artifact": lambda name, **_: self._artifact_by_name(e, n, name),
                "runCount": lambda filters=None, **_: len(self._runs(e, n, filters)),
                "runs": lambda filters=None, order=None, **a: self._conn(
                    [self.v_run(r) for r in self._runs(e, n, filters, order)], a),
                "artifactTypes": lambda **a: self._conn(
                    [self.v_type(e, n, t["name"]) for k, t in self.data["types"].items()
                     if k.rsplit("/", 1)[0] == f"{e}/{n}"], a),
                "artifactCollections": lambda filters=None, order=None, **a: self._conn(
                    [self.v_collection(c) for c in self._collections(e, n, None, filters, order)], a)}

    def _runs(self, e: str, p: str, filters: str | dict | None = None, order: str | None = None) -> list[dict]:
        """The project's runs that `filters` selects, in `order` (creation order by default): `api.runs()`."""
        runs = [r for r in self.data["runs"].values() if (r["entity"], r["project"]) == (e, p)]
        return browse.select_runs(runs, self.entity, filters, order)

    def _collections(self, e: str, p: str, type_name: str | None, filters: Any, order: Any) -> list[dict]:
        if filters not in (None, "{}", {}) or order:  # the SDK sends them only when the server says it can
            raise GraphQLFailure("W&B stand-in: filtering or ordering artifact collections is not modelled")
        return [c for c in self.data["collections"].values()
                if (c["entity"], c["project"]) == (e, p) and type_name in (None, c["type"])]

    def _split(self, name: str) -> tuple[str, str]:
        coll, _, alias = name.partition(":")
        return coll, alias or "latest"

    def _membership_by_name(self, e: str, p: str, name: str) -> dict | None:
        coll, alias = self._split(name)
        c = self.collection(e, p, coll)
        aid = self.resolve_alias(c, alias) if c else None
        return self.v_membership(c, aid) if c and aid else None

    def _artifact_by_name(self, e: str, p: str, name: str) -> dict | None:
        coll, alias = self._split(name)
        c = self.collection(e, p, coll)
        aid = self.resolve_alias(c, alias) if c else None
        return self.v_artifact(aid) if aid else None

    def v_type(self, e: str, p: str, name: str) -> dict | None:
        t = self.data["types"].get(f"{e}/{p}/{name}")
        if t is None:
            return None
        return {"__typename": "ArtifactType", "id": t["id"], "name": name, "description": None,
                "createdAt": t["created"],
                "artifactCollection": lambda name, **_: self.v_collection(self._typed(e, p, t["name"], name)),
                "artifactCollections": lambda filters=None, order=None, **a: self._conn(
                    [self.v_collection(c) for c in self._collections(e, p, t["name"], filters, order)], a)}

    def _typed(self, e: str, p: str, type_name: str, name: str) -> dict | None:
        c = self.collection(e, p, name)
        return c if c and c["type"] == type_name else None

    def v_run(self, r: dict | None) -> dict | None:
        if r is None:
            return None
        key = f"{r['entity']}/{r['project']}/{r['name']}"
        return {"__typename": "Run", "id": r["id"], "name": r["name"], "displayName": r["displayName"],
                "description": r.get("notes"), "notes": r.get("notes"), "group": r.get("group"),
                "jobType": r.get("jobType"), "state": r["state"], "tags": r.get("tags") or [],
                "config": json.dumps(r["config"]), "summaryMetrics": json.dumps(r["summary"]),
                "systemMetrics": "{}", "historyLineCount": len(r["history"]), "logLineCount": 0,
                "eventsLineCount": len(r.get("events") or []),
                "historyTail": json.dumps([json.dumps(h) for h in r["history"][-10:]]),
                "eventsTail": json.dumps([json.dumps(h) for h in (r.get("events") or [])[-10:]]),
                "wandbConfig": lambda keys=None, **_: json.dumps(self._wandb_config(r, keys)),
                "sweepName": r.get("sweep"), "createdAt": r["created"],
                "heartbeatAt": r["updated"], "updatedAt": r["updated"],
                "user": {"__typename": "User", "name": self.entity, "username": self.entity},
                "projectId": str(self.data["projects"][f"{r['entity']}/{r['project']}"]["num"]), "host": r.get("host"),
                "historyKeys": lambda **_: browse.history_keys(r["history"]), "commit": None, "readOnly": False,
                "exitcode": r.get("exitcode"),
                "project": lambda **_: self.v_project(self.project(r["entity"], r["project"])),
                "outputArtifacts": lambda **a: self._conn([self.v_artifact(x) for x in r["outputs"]], a),
                "inputArtifacts": lambda **a: self._conn([self.v_artifact(x) for x in r["inputs"]], a),
                "history": lambda samples=None, minStep=None, maxStep=None, **_: browse.history(
                    r["history"], samples, minStep, maxStep),
                "events": lambda samples=None, **_: browse.history(r.get("events") or [], samples),
                "sampledHistory": lambda specs, **_: [browse.sampled_history(r["history"], json.loads(x))
                                                      for x in specs],
                # W&B exports older history to parquet files; the stand-in keeps every row live
                "parquetHistory": lambda liveKeys=(), **_: {
                    "__typename": "ParquetHistory", "parquetUrls": [],
                    "liveData": [{k: h[k] for k in liveKeys if k in h} for h in r["history"]]},
                "_key": key}

    @staticmethod
    def _wandb_config(r: dict, keys: list[str] | None) -> dict:
        """The run's `_wandb` config (what wandb-core wrote: `t` marks a run that really started), by key."""
        w = (r["config"].get("_wandb") or {}).get("value") or {}
        return {k: v for k, v in w.items() if keys is None or k in keys}

    @staticmethod
    def _conn(nodes: list, args: dict) -> dict:
        start = int(args.get("after") or 0)
        first = args.get("first") or len(nodes) or 1
        page = nodes[start:start + first]
        end = start + len(page)
        return {"__typename": "Connection", "totalCount": len(nodes),
                "pageInfo": {"__typename": "PageInfo", "endCursor": str(end) if page else None,
                             "hasNextPage": end < len(nodes)},
                "edges": [{"node": n, "cursor": str(start + i + 1)} for i, n in enumerate(page)]}

    def v_collection(self, c: dict | None) -> dict | None:
        if c is None:
            return None
        typename = "ArtifactSequence" if c["kind"] == "sequence" else "ArtifactPortfolio"
        latest = self.resolve_alias(c, "latest")
        return {"__typename": typename, "__interfaces": ("ArtifactCollection",), "id": c["id"], "name": c["name"],
                "description": None, "createdAt": c["created"], "updatedAt": c["created"], "state": "READY",
                "digestAlgorithm": "MANIFEST_MD5", "tags": {"edges": []},
                "project": lambda **_: self.v_project(self.project(c["entity"], c["project"])),
                "defaultArtifactType": {"__typename": "ArtifactType", "name": c["type"]},
                "latestArtifact": lambda **_: self.v_artifact(latest) if latest else None,
                "artifactMembership": lambda aliasName, **_: (
                    self.v_membership(c, aid) if (aid := self.resolve_alias(c, aliasName)) else None),
                "aliases": lambda **a: self._conn([self.v_alias(c, x) for x in sorted(c["aliases"])], a),
                "artifactMemberships": lambda **a: self._conn([self.v_membership(c, m) for m in c["members"]], a)}

    def v_alias(self, c: dict, alias: str) -> dict:
        return {"__typename": "ArtifactAlias", "id": gid("ArtifactAlias", f"{c['id']}:{alias}"), "alias": alias,
                "artifactCollection": lambda **_: self.v_collection(c)}

    def aliases_of(self, c: dict, aid: str) -> list[str]:
        names = [a for a, x in sorted(c["aliases"].items()) if x == aid]
        return (["latest"] if self.resolve_alias(c, "latest") == aid else []) + names

    def v_membership(self, c: dict, aid: str) -> dict:
        a = self.artifact(aid)
        return {"__typename": "ArtifactCollectionMembership", "id": gid("ArtifactCollectionMembership",
                                                                         f"{c['id']}:{aid}"),
                "versionIndex": c["members"].index(aid), "createdAt": a["created"],
                "aliases": lambda **_: [self.v_alias(c, x) for x in self.aliases_of(c, aid)],
                "artifactCollection": lambda **_: self.v_collection(c),
                "artifact": lambda **_: self.v_artifact(aid),
                "files": lambda **q: self._files(a, q)}

    def _files(self, a: dict, q: dict) -> dict:
        names = q.get("names")
        nodes = [{"__typename": "File", "id": gid("File", f"{a['id']}:{n}"), "name": n, "displayName": n,
                  "directUrl": self._file_url(f), "url": self._file_url(f), "sizeBytes": f["size"],
                  "md5": f["digest"], "digest": f["digest"], "mimetype": None, "updatedAt": a["updated"]}
                 for n, f in sorted(a["files"].items()) if not names or n in names]
        return self._conn(nodes, q)

    def _file_url(self, f: dict) -> str | None:
        return f.get("ref") or f"{self.url}/_standin/objects/{b64_to_hex(f['digest'])}"

    def v_artifact(self, aid: str | None) -> dict | None:
        if aid is None or aid not in self.data["artifacts"]:
            return None
        a = self.data["artifacts"][aid]
        seq = self.data["collections"][a["sequence"]]
        colls = [c for c in self.data["collections"].values() if aid in c["members"]]
        manifest_url = f"{self.url}/_standin/manifests/{a['n']}" if a["n_manifest"] else None
        return {"__typename": "Artifact", "id": aid, "versionIndex": seq["members"].index(aid),
                "artifactType": {"__typename": "ArtifactType", "name": a["type"]}, "description": a["description"],
                "metadata": json.dumps(a["metadata"]), "ttlDurationSeconds": -1, "ttlIsInherited": True,
                "tags": [], "historyStep": a.get("historyStep"), "state": a["state"], "size": a["size"],
                "digest": a["digest"], "digestAlgorithm": "MANIFEST_MD5", "commitHash": a["digest"],
                "fileCount": len(a["files"]), "createdAt": a["created"], "updatedAt": a["updated"],
                "labels": None,
                "artifactSequence": lambda **_: self.v_collection(seq),
                "aliases": lambda **_: [self.v_alias(c, x) for c in colls for x in self.aliases_of(c, aid)],
                "artifactMemberships": lambda **q: self._conn([self.v_membership(c, aid) for c in colls], q),
                "createdBy": lambda **_: self.v_run(self.data["runs"].get(a["created_by"] or "")),
                "usedBy": lambda **q: self._conn([self.v_run(self.data["runs"][k]) for k in a["used_by"]], q),
                "currentManifest": lambda **_: {"__typename": "ArtifactManifest", "id": gid("ArtifactManifest", a["n"]),
                                                "file": {"__typename": "File", "directUrl": manifest_url,
                                                         "id": gid("File", f"manifest-{a['n']}")}}
                if manifest_url else None,
                "files": lambda **q: self._files(a, q),
                "filesByManifestEntries": lambda **q: self._files(
                    a, {**q, "names": [x["name"] for x in q.get("entries") or []] or None})}

    # ---------------------------------------------------------------------------------------- roots
    def query_root(self) -> dict:
        return {"viewer": {"__typename": "User", "id": gid("User", 1), "entity": self.entity, "name": self.entity,
                           "username": self.entity, "email": None, "admin": False, "flags": None,
                           "deletedAt": None, "apiKeys": None, "teams": {"edges": []},
                           "userInfo": None},
                "serverInfo": {"features": [{"name": f, "isEnabled": True} for f in FEATURES],
                               "cliVersionInfo": None, "latestLocalVersionInfo": None},
                "project": lambda name, entityName=None, **_: self.v_project(self.project(entityName, name)),
                "model": lambda name=None, entityName=None, **_: self.v_project(self.project(entityName, name)),
                "entity": lambda name=None, **_: self.v_entity(name),
                "organization": lambda name=None, **_: self.v_entity(self.entity)["organization"],
                "artifact": lambda id, **_: self.v_artifact(id),
                "clientIDMapping": lambda **_: None}

    def mutation_root(self) -> dict:
        return {"upsertBucket": lambda input, **_: self.upsert_bucket(input),
                "createRunFiles": lambda input, **_: self.create_run_files(input),
                "createArtifact": lambda input, **_: self.create_artifact(input),
                "createArtifactManifest": lambda input, **_: self.create_manifest(input),
                "createArtifactFiles": lambda input, **_: self.create_files(input),
                "commitArtifact": lambda input, **_: self.commit(input["artifactID"]),
                "useArtifact": lambda input, **_: self.use(input),
                "linkArtifact": lambda input, **_: self.link(input),
                "addAliases": lambda input, **_: self.add_aliases(input),
                "deleteAliases": lambda input, **_: self.delete_aliases(input),
                "updateArtifact": lambda input, **_: self.update_artifact(input)}

    # ---------------------------------------------------------------------------------------- runs
    def upsert_bucket(self, i: dict) -> dict:
        p = self.project(i.get("entityName"), i.get("modelName"), create=True)
        assert p is not None
        name = i.get("name") or i.get("id")
        if not name:
            raise GraphQLFailure("upsertBucket needs a run name")
        key = f"{p['entity']}/{p['name']}/{name}"
        r = self.data["runs"].get(key)
        inserted = r is None
        if r is None:
            r = self.data["runs"][key] = {
                "id": gid("Run", self._next()), "entity": p["entity"], "project": p["name"], "name": name,
                "displayName": name, "config": {}, "summary": {}, "history": [], "state": "running",
                "exitcode": None, "inputs": [], "outputs": [], "created": now(), "updated": now()}
        for field, target in (("displayName", "displayName"), ("groupName", "group"), ("jobType", "jobType"),
                              ("tags", "tags"), ("notes", "notes"), ("host", "host"), ("sweep", "sweep"),
                              ("state", "state")):
            if i.get(field) is not None:
                r[target] = i[field]
        if i.get("config"):
            r["config"].update(json.loads(i["config"]))
        if i.get("summaryMetrics"):
            r["summary"].update(json.loads(i["summaryMetrics"]))
        r["updated"] = now()
        return {"bucket": self.v_run(r), "inserted": inserted}

    def file_stream(self, e: str, p: str, name: str, body: dict) -> None:
        r = self.run(e, p, name)
        if r is None:
            raise GraphQLFailure(f"run {e}/{p}/{name} not found")
        for fname, chunk in (body.get("files") or {}).items():
            lines = [json.loads(x) for x in chunk.get("content") or []]
            if fname in ("wandb-history.jsonl", "wandb-events.jsonl"):  # lines at their offsets, as W&B keeps them
                rows = r.setdefault("history" if fname == "wandb-history.jsonl" else "events", [])
                off = int(chunk.get("offset") or 0)
                rows[off:off + len(lines)] = lines
                del rows[MAX_HISTORY_LINES:]
            elif fname == "wandb-summary.json" and lines:
                r["summary"] = lines[-1]
        if body.get("complete"):
            r["exitcode"] = body.get("exitcode")
            r["state"] = "finished" if body.get("exitcode") == 0 else "failed"
        r["updated"] = now()

    def create_run_files(self, i: dict) -> dict:
        r = self.run(i.get("entityName"), i.get("projectName"), i["runName"])
        if r is None:
            raise GraphQLFailure(f"run {i['runName']} not found")
        base = f"{self.url}/_standin/run-files/{r['entity']}/{r['project']}/{r['name']}"
        return {"runID": r["id"], "uploadHeaders": [],
                "files": [{"name": f, "uploadUrl": f"{base}/{f}"} for f in i.get("files") or []]}

    def put_run_file(self, key: str, data: bytes) -> None:
        digest = hashlib.md5(data).hexdigest()
        self.blobs.put(digest, data)
        self.data["run_files"][key] = {"size": len(data), "md5": digest}

    # ---------------------------------------------------------------------------------------- artifacts
    def create_artifact(self, i: dict) -> dict:
        e, p = i.get("entityName") or self.entity, i.get("projectName")
        proj = self.project(e, p, create=True)
        assert proj is not None
        e, p = proj["entity"], proj["name"]
        tname, cname = i["artifactTypeName"], i["artifactCollectionName"]
        tkey = f"{e}/{p}/{tname}"
        self.data["types"].setdefault(tkey, {"id": gid("ArtifactType", self._next()), "name": tname,
                                             "created": now()})
        seq = self.collection(e, p, cname, "sequence")
        if seq is None:
            if self.collection(e, p, cname):
                raise GraphQLFailure(f"{cname} is a portfolio, not an artifact sequence")
            cid = gid("ArtifactSequence", self._next())
            seq = self.data["collections"][cid] = {"id": cid, "kind": "sequence", "entity": e, "project": p,
                                                   "name": cname, "type": tname, "aliases": {}, "members": [],
                                                   "created": now()}
        elif seq["type"] != tname:
            raise GraphQLFailure(f"artifact collection {cname} has type {seq['type']}, not {tname}")
        aliases = [a["alias"] for a in i.get("aliases") or [] if a.get("artifactCollectionName", cname) == cname]
        for aid in seq["members"]:  # W&B's de-duplication: the same digest in a sequence is the same version
            a = self.data["artifacts"][aid]
            if a["digest"] == i["digest"] and a["state"] != "DELETED":
                if a["state"] == "COMMITTED":
                    for al in aliases:
                        self.set_alias(seq, al, aid)
                else:
                    a["pending_aliases"] = sorted(set(a["pending_aliases"]) | set(aliases))
                return {"artifact": self.v_artifact(aid)}
        n = self._next()
        aid = gid("Artifact", n)
        run_key = f"{e}/{p}/{i['runName']}" if i.get("runName") else None
        if run_key and run_key not in self.data["runs"]:
            raise GraphQLFailure(f"run {run_key} not found")
        self.data["artifacts"][aid] = {
            "id": aid, "n": n, "sequence": seq["id"], "type": tname, "digest": i["digest"],
            "description": i.get("description"), "metadata": json.loads(i.get("metadata") or "{}"),
            "state": "PENDING", "created_by": run_key, "used_by": [], "files": {}, "size": 0,
            "n_manifest": False, "pending_aliases": aliases, "historyStep": i.get("historyStep"),
            "created": now(), "updated": now()}
        seq["members"].append(aid)
        return {"artifact": self.v_artifact(aid)}

    def create_manifest(self, i: dict) -> dict:
        a = self.artifact(i["artifactID"])
        return {"artifactManifest": {"id": gid("ArtifactManifest", a["n"]), "file": {
            "id": gid("File", f"manifest-{a['n']}"), "uploadUrl": f"{self.url}/_standin/manifests/{a['n']}",
            "uploadHeaders": []}}}

    def put_manifest(self, n: str, data: bytes) -> None:
        a = next((a for a in self.data["artifacts"].values() if str(a["n"]) == n), None)
        if a is None:
            raise KeyError(n)
        manifest = json.loads(data)
        if a["state"] == "COMMITTED":
            raise GraphQLFailure("the manifest of a committed version cannot change")
        files = {}
        for path, entry in (manifest.get("contents") or {}).items():
            files[path] = {"digest": entry["digest"], "size": entry.get("size") or 0}
            if entry.get("ref"):
                files[path]["ref"] = entry["ref"]
        a["files"], a["size"], a["n_manifest"] = files, sum(f["size"] for f in files.values()), True
        self.data["manifests"][str(a["n"])] = manifest

    def create_files(self, i: dict) -> dict:
        edges = []
        for f in i.get("artifactFiles") or []:
            a = self.artifact(f["artifactID"])
            key = b64_to_hex(f["md5"])
            # W&B's storage skips bytes it already holds: no upload URL for a known object
            url = None if self.blobs.has(key) else f"{self.url}/_standin/objects/{key}"
            edges.append({"node": {"storagePath": f"objects/{key}", "uploadUrl": url, "uploadHeaders": [],
                                   "uploadMultipartUrls": None, "artifact": {"id": a["id"]}}})
        return {"files": {"edges": edges}}

    def commit(self, aid: str) -> dict:
        a = self.artifact(aid)
        if a["state"] != "COMMITTED":
            if not a["n_manifest"]:
                raise GraphQLFailure(f"artifact {aid} has no manifest uploaded")
            missing = [p for p, f in a["files"].items() if "ref" not in f and not self.blobs.has(b64_to_hex(
                f["digest"]))]
            if missing:
                raise GraphQLFailure(f"artifact {aid} is missing uploaded files: {', '.join(sorted(missing)[:5])}")
            a["state"], a["updated"] = "COMMITTED", now()
            seq = self.data["collections"][a["sequence"]]
            for al in a.pop("pending_aliases", []):
                self.set_alias(seq, al, aid)
            a["pending_aliases"] = []
            if a["created_by"] and aid not in self.data["runs"][a["created_by"]]["outputs"]:
                self.data["runs"][a["created_by"]]["outputs"].append(aid)
        return {"artifact": {"id": aid, "digest": a["digest"]}}

    def use(self, i: dict) -> dict:
        aid = i["artifactID"]
        a = self.artifact(aid)
        r = self.run(i.get("entityName"), i.get("projectName"), i["runName"])
        if r is None:
            raise GraphQLFailure(f"run {i['runName']} not found")
        key = f"{r['entity']}/{r['project']}/{r['name']}"
        if aid not in r["inputs"]:
            r["inputs"].append(aid)
        if key not in a["used_by"]:
            a["used_by"].append(key)
        return {"artifact": self.v_artifact(aid)}

    def link(self, i: dict) -> dict:
        aid = i.get("artifactID")
        if not aid:
            raise GraphQLFailure("linkArtifact by client id is not modelled: pass artifactID")
        a = self.artifact(aid)
        if a["state"] != "COMMITTED":
            raise GraphQLFailure(f"artifact {aid} is not committed")
        e, p, name = i["entityName"], i["projectName"], i["artifactPortfolioName"]
        proj = self.project(e, p, create=p.startswith(REGISTRY_PREFIX))
        if proj is None:
            raise GraphQLFailure(f"project {e}/{p} not found")
        c = self.collection(e, p, name)
        if c is None:
            cid = gid("ArtifactPortfolio", self._next())
            c = self.data["collections"][cid] = {"id": cid, "kind": "portfolio", "entity": e, "project": p,
                                                 "name": name, "type": a["type"], "aliases": {}, "members": [],
                                                 "created": now()}
        if aid not in c["members"]:
            c["members"].append(aid)
        for al in i.get("aliases") or []:
            self.set_alias(c, al["alias"], aid)
        return {"versionIndex": c["members"].index(aid), "artifactMembership": self.v_membership(c, aid)}

    def _alias_targets(self, i: dict) -> list[tuple[dict, str]]:
        out = []
        for al in i.get("aliases") or []:
            c = self.collection(al.get("entityName") or self.entity, al["projectName"], al["artifactCollectionName"])
            if c is None or i["artifactID"] not in c["members"]:
                raise GraphQLFailure(f"artifact {i['artifactID']} is not in collection {al['artifactCollectionName']}")
            out.append((c, al["alias"]))
        return out

    def add_aliases(self, i: dict) -> dict:
        self.artifact(i["artifactID"])
        for c, alias in self._alias_targets(i):
            self.set_alias(c, alias, i["artifactID"])
        return {"success": True}

    def delete_aliases(self, i: dict) -> dict:
        for c, alias in self._alias_targets(i):
            if c["aliases"].get(alias) == i["artifactID"]:
                del c["aliases"][alias]
        return {"success": True}

    def update_artifact(self, i: dict) -> dict:
        a = self.artifact(i["artifactID"])
        if i.get("description") is not None:
            a["description"] = i["description"]
        if i.get("metadata") is not None:
            a["metadata"] = json.loads(i["metadata"])
        seq = self.data["collections"][a["sequence"]]
        for al in i.get("aliases") or []:
            self.set_alias(seq, al["alias"], a["id"])
        a["updated"] = now()
        return {"artifact": self.v_artifact(a["id"])}

    # ---------------------------------------------------------------------------------------- dump
    def summary(self) -> dict:
        """The state as a reader wants it: every collection's versions with digest, aliases, producer, users."""
        out: dict[str, Any] = {"entity": self.entity, "runs": {}, "collections": {}}
        for k, r in self.data["runs"].items():
            out["runs"][k] = {"state": r["state"], "exitcode": r["exitcode"], "group": r.get("group"),
                              "job_type": r.get("jobType"), "summary": r["summary"],
                              "history_lines": len(r["history"]),
                              "inputs": [self._label(x) for x in r["inputs"]],
                              "outputs": [self._label(x) for x in r["outputs"]]}
        for c in self.data["collections"].values():
            out["collections"][f"{c['entity']}/{c['project']}/{c['name']}"] = {
                "kind": c["kind"], "type": c["type"], "versions": [
                    {"version": f"v{i}", "id": aid, "label": self._label(aid),
                     "digest": self.data["artifacts"][aid]["digest"],
                     "state": self.data["artifacts"][aid]["state"], "aliases": self.aliases_of(c, aid),
                     "files": sorted(self.data["artifacts"][aid]["files"]),
                     "logged_by": self.data["artifacts"][aid]["created_by"],
                     "used_by": self.data["artifacts"][aid]["used_by"]}
                    for i, aid in enumerate(c["members"])]}
        return out

    def _label(self, aid: str) -> str:
        a = self.data["artifacts"][aid]
        seq = self.data["collections"][a["sequence"]]
        return f"{seq['entity']}/{seq['project']}/{seq['name']}:v{seq['members'].index(aid)}"
