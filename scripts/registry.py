#!/usr/bin/env python3
"""A small schema-registry stand-in for the tests: the documented REST
endpoints of Confluent Schema Registry that serializers and sluice use,
on 127.0.0.1, schemas kept in memory.

    registry.py --port-file F    # binds 127.0.0.1:0, writes the port to F

Endpoints: POST /subjects/{s}/versions (register; the same schema under a
subject keeps its id), POST /subjects/{s} (look up), GET /schemas/ids/{id},
GET /schemas/ids/{id}/versions, GET /subjects, GET /subjects/{s}/versions,
GET /subjects/{s}/versions/{n|latest}, GET /config[/{s}], GET /schemas/types.
Errors have the registry's shape: {"error_code": 40401, "message": ...}.
Optional basic auth: --user U --password P (401 otherwise).
"""

import argparse
import base64
import json
import re
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import unquote, urlparse

LOCK = threading.Lock()
SCHEMAS = []  # index id-1: {"schema", "schemaType", "references"}
SUBJECTS = {}  # subject -> [schema id per version]


def canonical(body):
    return (body.get("schemaType", "AVRO"), body["schema"],
            json.dumps(body.get("references", []), sort_keys=True))


def register(subject, body):
    key = canonical(body)
    with LOCK:
        found = next((i + 1 for i, s in enumerate(SCHEMAS)
                      if canonical(s) == key), None)
        if found is None:
            SCHEMAS.append({"schema": body["schema"],
                            "schemaType": body.get("schemaType", "AVRO"),
                            "references": body.get("references", [])})
            found = len(SCHEMAS)
        versions = SUBJECTS.setdefault(subject, [])
        if found not in versions:
            versions.append(found)
        return found, versions.index(found) + 1


def version_body(subject, version, schema_id):
    entry = SCHEMAS[schema_id - 1]
    body = {"subject": subject, "version": version, "id": schema_id,
            "schema": entry["schema"]}
    if entry["schemaType"] != "AVRO":
        body["schemaType"] = entry["schemaType"]
    if entry["references"]:
        body["references"] = entry["references"]
    return body


class Handler(BaseHTTPRequestHandler):
    auth = None

    def log_message(self, *args):
        pass

    def reply(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def error(self, status, code, message):
        self.reply(status, {"error_code": code, "message": message})

    def authorized(self):
        if self.auth is None:
            return True
        header = self.headers.get("Authorization", "")
        if header == "Basic " + self.auth:
            return True
        self.error(401, 40101, "Unauthorized")
        return False

    def path_parts(self):
        return [unquote(p) for p in urlparse(self.path).path.strip("/").split("/") if p]

    def do_GET(self):
        if not self.authorized():
            return
        parts = self.path_parts()
        with LOCK:
            if parts == ["subjects"]:
                return self.reply(200, sorted(SUBJECTS))
            if parts == ["schemas", "types"]:
                return self.reply(200, ["AVRO", "PROTOBUF", "JSON"])
            if parts[:1] == ["config"]:
                return self.reply(200, {"compatibilityLevel": "BACKWARD"})
            if len(parts) >= 3 and parts[:2] == ["schemas", "ids"]:
                try:
                    schema_id = int(parts[2])
                    entry = SCHEMAS[schema_id - 1] if schema_id > 0 else None
                except (ValueError, IndexError):
                    entry = None
                if entry is None:
                    return self.error(404, 40403, f"Schema {parts[2]} not found")
                if parts[3:] == ["versions"]:
                    return self.reply(200, [
                        {"subject": s, "version": v.index(schema_id) + 1}
                        for s, v in SUBJECTS.items() if schema_id in v])
                body = {"schema": entry["schema"]}
                if entry["schemaType"] != "AVRO":
                    body["schemaType"] = entry["schemaType"]
                if entry["references"]:
                    body["references"] = entry["references"]
                return self.reply(200, body)
            if len(parts) >= 3 and parts[0] == "subjects" and parts[2] == "versions":
                versions = SUBJECTS.get(parts[1])
                if versions is None:
                    return self.error(404, 40401, f"Subject '{parts[1]}' not found.")
                if len(parts) == 3:
                    return self.reply(200, list(range(1, len(versions) + 1)))
                wanted = parts[3]
                number = len(versions) if wanted in ("latest", "-1") else int(wanted)
                if not 1 <= number <= len(versions):
                    return self.error(404, 40402, f"Version {wanted} not found.")
                return self.reply(200, version_body(parts[1], number, versions[number - 1]))
        self.error(404, 404, "Not found")

    def do_POST(self):
        if not self.authorized():
            return
        parts = self.path_parts()
        length = int(self.headers.get("Content-Length", "0"))
        body = json.loads(self.rfile.read(length) or b"{}")
        if len(parts) == 3 and parts[0] == "subjects" and parts[2] == "versions":
            schema_id, _ = register(parts[1], body)
            return self.reply(200, {"id": schema_id})
        if len(parts) == 2 and parts[0] == "subjects":
            key = canonical(body)
            with LOCK:
                versions = SUBJECTS.get(parts[1])
                if versions is None:
                    return self.error(404, 40401, f"Subject '{parts[1]}' not found.")
                for number, schema_id in enumerate(versions, 1):
                    if canonical(SCHEMAS[schema_id - 1]) == key:
                        return self.reply(200, version_body(parts[1], number, schema_id))
            return self.error(404, 40403, "Schema not found")
        self.error(404, 404, "Not found")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port-file", required=True)
    parser.add_argument("--user")
    parser.add_argument("--password")
    args = parser.parse_args()
    if args.user:
        Handler.auth = base64.b64encode(f"{args.user}:{args.password}".encode()).decode()
    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    with open(args.port_file + ".tmp", "w") as out:
        out.write(str(server.server_address[1]))
    import os
    os.replace(args.port_file + ".tmp", args.port_file)
    server.serve_forever()


if __name__ == "__main__":
    main()
