#!/usr/bin/env python3
"""Independent judge of a provenance file (.intoto.jsonl), used by the tests.

Verifies every DSSE envelope with securesystemslib (the reference DSSE implementation) and the given
Ed25519 public key, then parses each payload strictly with the in-toto attestation framework's own
protobuf definitions: the in-toto Statement v1 (and its validation rules) and the SLSA Provenance v1
predicate (unknown fields are errors). Prints a JSON summary for the caller to compare.

usage: check_provenance.py FILE KEYID PUBLIC_KEY_HEX
"""

import json
import sys

from google.protobuf import json_format
from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
from in_toto_attestation.v1 import statement_pb2
from in_toto_attestation.v1.statement import Statement
from securesystemslib.dsse import Envelope
from securesystemslib.signer import SSlibKey

PAYLOAD_TYPE = "application/vnd.in-toto+json"
SLSA_V1 = "https://slsa.dev/provenance/v1"


def main() -> int:
    path, keyid, public_hex = sys.argv[1:4]
    key = SSlibKey(keyid, "ed25519", "ed25519", {"public": public_hex})
    summaries = []
    with open(path, encoding="utf-8") as lines:
        for line in lines:
            if not line.strip():
                continue
            envelope = Envelope.from_dict(json.loads(line))
            if envelope.payload_type != PAYLOAD_TYPE:
                raise SystemExit(f"payload type {envelope.payload_type!r}")
            # Raises unless the threshold of one signature by this key verifies.
            envelope.verify([key], 1)
            statement_pb = json_format.Parse(envelope.payload, statement_pb2.Statement())
            Statement.copy_from_pb(statement_pb).validate()
            if statement_pb.predicate_type != SLSA_V1:
                raise SystemExit(f"predicate type {statement_pb.predicate_type!r}")
            provenance = json_format.ParseDict(
                json_format.MessageToDict(statement_pb.predicate), provenance_pb2.Provenance()
            )
            definition = provenance.build_definition
            summaries.append(
                {
                    "subject": [
                        {"name": s.name, "digest": dict(s.digest)} for s in statement_pb.subject
                    ],
                    "build_type": definition.build_type,
                    "external_parameters": json_format.MessageToDict(
                        definition.external_parameters
                    ),
                    "resolved_dependencies": [
                        {
                            "name": d.name,
                            "uri": d.uri,
                            "digest": dict(d.digest),
                            "annotations": json_format.MessageToDict(d.annotations),
                        }
                        for d in definition.resolved_dependencies
                    ],
                    "builder_id": provenance.run_details.builder.id,
                    "invocation_id": provenance.run_details.metadata.invocation_id,
                    "started_on": provenance.run_details.metadata.started_on.ToJsonString(),
                    "finished_on": provenance.run_details.metadata.finished_on.ToJsonString(),
                }
            )
    if not summaries:
        raise SystemExit("no envelope in the file")
    json.dump(summaries, sys.stdout)
    return 0


if __name__ == "__main__":
    sys.exit(main())
