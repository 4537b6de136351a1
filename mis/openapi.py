"""The OpenAPI 3.1 document of /api/v1, served at /api/v1/openapi.json.

Written by hand next to the handlers (mis/api.py); tests check that every route is
here and that live responses validate against it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["document"]

ID = {"type": "string", "pattern": "^[A-Za-z0-9_.@-]{1,64}$"}
ROLE = {"type": "string", "enum": ["patient", "doctor", "consultant"]}
STATE = {"type": "string",
         "enum": ["created", "ringing", "connecting", "live", "ended", "failed"]}
NUMBER_OR_NULL = {"type": ["number", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


ERRORS = {
    "401": _json(_ref("Error"), "missing or wrong API key (`auth.invalid`)"),
    "413": _json(_ref("Error"), "body above 64 KiB (`request.too_large`)"),
    "422": _json(_ref("Error"), "a field is invalid (`request.invalid`, `field` names it)"),
    "429": _json(_ref("Error"), "too many failed authentications from this client, or "
                 "requests with this credential (`rate.limited`, with Retry-After)"),
    "503": _json(_ref("Error"), "Redis is not answering (`service.unavailable`, with "
                 "Retry-After)"),
}
NOT_FOUND = {"404": _json(_ref("Error"), "`call.not_found` / `participant.not_found`")}
CONFLICT = {"409": _json(_ref("Error"), "`call.ended`, `call.full`, `request.conflict`")}
CALL_ID = {"name": "call_id", "in": "path", "required": True, "schema": {"type": "string"}}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object", "required": ["code", "message"],
        "properties": {"code": {"type": "string"}, "message": {"type": "string"},
                       "field": {"type": "string"}},
    },
    "NewParticipant": {
        "type": "object", "required": ["id", "name", "role"], "additionalProperties": False,
        "properties": {"id": ID, "name": {"type": "string", "minLength": 1, "maxLength": 200},
                       "role": ROLE},
    },
    "NewCall": {
        "type": "object", "required": ["kind", "participants"],
        "properties": {
            "kind": {"type": "string", "enum": ["consultation", "referral", "conference"]},
            "participants": {"type": "array", "minItems": 1, "maxItems": 8,
                             "items": _ref("NewParticipant")},
            "metadata": {"type": "object", "description": "echoed back in reads and webhooks; "
                         "nested at most 8 levels, at most 16 KiB as JSON (else 422)"},
            "schedule": _ref("Schedule"),
        },
    },
    "Schedule": {
        "type": "object", "required": ["start", "end"],
        "description": "the appointment window, unix seconds; join tokens last until an "
                       "hour after its end (end: in the future, at most 7 days after start)",
        "properties": {"start": {"type": "number", "exclusiveMinimum": 0},
                       "end": {"type": "number", "exclusiveMinimum": 0}},
    },
    "Participant": {
        "type": "object", "required": ["id", "name", "role", "state", "published"],
        "properties": {"id": {"type": "string"}, "name": {"type": "string"}, "role": ROLE,
                       "state": {"type": "string"},
                       "published": {"type": "array", "items": {"type": "string"}}},
    },
    "Call": {
        "type": "object",
        "required": ["id", "kind", "state", "participants", "createdAt", "metadata"],
        "properties": {
            "id": {"type": "string"}, "kind": {"type": "string"}, "state": STATE,
            "failure": {"type": ["string", "null"]},
            "failureDetail": {"type": ["string", "null"]},
            "mediaServer": {"type": ["string", "null"]},
            "participants": {"type": "array", "items": _ref("Participant")},
            "createdAt": {"type": "number"}, "metadata": {"type": "object"},
            "schedule": {"oneOf": [_ref("Schedule"), {"type": "null"}]},
            "liveAt": NUMBER_OR_NULL, "endedAt": NUMBER_OR_NULL, "duration": NUMBER_OR_NULL,
            "joins": {"type": "array", "items": {"type": "object"}},
            "networks": {"type": "object", "description": "per participant, the browser's "
                         "end of each selected ICE pair: `host/udp`, `srflx/udp`, "
                         "`prflx/tcp`, `relay/udp`...",
                         "additionalProperties": {"type": "array",
                                                  "items": {"type": "string"}}},
            "timeline": {"type": "array", "items": {"type": "object"}},
            "timelinePage": {
                "type": "object", "description": "GET /calls/{id} only: where this page of "
                "the timeline starts (`from`), the `timelineFrom` of the next page (null: "
                "none), the entries recorded in all (`total`), and the client diagnostics "
                "not kept past the per-call cap",
                "required": ["from", "next", "total", "clientEventsDropped"],
                "properties": {"from": {"type": "integer"},
                               "next": {"type": ["integer", "null"]},
                               "total": {"type": "integer"},
                               "clientEventsDropped": {"type": "integer"}}},
        },
    },
    "JoinToken": {
        "type": "object", "required": ["id", "role", "token", "link"],
        "properties": {"id": {"type": "string"}, "role": ROLE, "token": {"type": "string"},
                       "link": {"type": "string"}},
    },
    "CreatedCall": {},  # the Call, with join tokens in place of participants: below
    "NewWorkstationLink": {
        "type": "object", "required": ["id", "name", "role"],
        "properties": {
            "id": ID, "name": {"type": "string", "minLength": 1, "maxLength": 200},
            "role": {"type": "string", "enum": ["doctor", "consultant"]},
            "ttl": {"type": "number", "minimum": 60, "maximum": 604800,
                    "description": "seconds the link stays valid; default auth.token_ttl"},
        },
    },
    "WorkstationLink": {
        "type": "object", "required": ["link", "token", "expiresAt"],
        "properties": {"link": {"type": "string"}, "token": {"type": "string"},
                       "expiresAt": {"type": "integer",
                                     "description": "unix seconds"}},
    },
    "CallPage": {
        "type": "object", "required": ["calls", "nextCursor"],
        "properties": {"calls": {"type": "array", "items": _ref("Call")},
                       "nextCursor": NUMBER_OR_NULL},
    },
    "Recording": {
        "type": "object", "required": ["call", "state", "files"],
        "properties": {
            "call": {"type": "string"},
            "state": {"type": "string",
                      "enum": ["verifying", "composing", "verified", "ready", "flagged",
                               "deleted"]},
            "files": {"type": "array", "items": {"type": "object", "properties": {
                "name": {"type": "string"}, "participant": {"type": "string"},
                "size": {"type": "integer"}, "sha256": {"type": "string"},
                "streams": {"type": "array", "items": {"type": "string"}},
                "duration": {"type": ["number", "null"]},
                "startedAt": {"type": ["number", "null"]},
                "endedAt": {"type": ["number", "null"]},
                "problem": {"type": ["string", "null"]}}}},
            "composed": {"type": ["object", "null"]},
            "problems": {"type": "array", "items": {"type": "string"}},
            "deleted": {"type": "object"},
        },
    },
    "WebhookEvent": {
        "type": "object", "required": ["id", "event", "time", "data", "deliveries", "pending"],
        "properties": {
            "id": {"type": "string"}, "event": {"type": "string"}, "time": {"type": "number"},
            "data": {"type": "object"},
            "deliveries": {"type": "array", "items": {
                "type": "object", "required": ["url", "at", "attempt", "status"],
                "properties": {"url": {"type": "string"}, "at": {"type": "number"},
                               "attempt": {"type": "integer"},
                               "status": {"type": ["integer", "null"]},
                               "error": {"type": ["string", "null"]},
                               # sent by a node whose claim ran out meanwhile: not booked
                               "claimLost": {"type": "boolean"}}}},
            "pending": {"type": "array", "items": {"type": "string"}},
        },
    },
}


SCHEMAS["CreatedCall"] = {
    **SCHEMAS["Call"],
    "properties": {**SCHEMAS["Call"]["properties"],
                   "participants": {"type": "array", "items": _ref("JoinToken")}},
}


def document() -> dict[str, Any]:
    return {
        "openapi": "3.1.0",
        "info": {"title": "Telemed signalling API", "version": "1"},
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {"apiKey": {"type": "http", "scheme": "bearer"}},
        },
        "security": [{"apiKey": []}],
        "paths": {
            "/api/v1/calls": {
                "post": {
                    "summary": "Create a call; returns a join token and link per participant",
                    "parameters": [{"name": "Idempotency-Key", "in": "header",
                                    "schema": {"type": "string", "maxLength": 200}}],
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("NewCall")}}},
                    "responses": {
                        "201": _json(_ref("CreatedCall"), "created"),
                        "200": _json(_ref("CreatedCall"),
                                     "an earlier request with the same Idempotency-Key"),
                        "507": _json(_ref("Error"), "the recordings volume is full "
                                     "(`recording.disk_full`); no call was created"),
                        **ERRORS, **CONFLICT},
                },
                "get": {
                    "summary": "Calls, newest first, paged by cursor",
                    "parameters": [
                        {"name": "state", "in": "query", "schema": STATE},
                        {"name": "since", "in": "query", "schema": {"type": "number"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 200}},
                        {"name": "cursor", "in": "query", "schema": {"type": "number"}},
                    ],
                    "responses": {"200": _json(_ref("CallPage"), "a page of calls"),
                                  **ERRORS},
                },
            },
            "/api/v1/calls/{call_id}": {
                "get": {
                    "summary": "A call, with a page of its timeline (live or from history)",
                    "parameters": [
                        CALL_ID,
                        {"name": "timelineFrom", "in": "query",
                         "schema": {"type": "integer", "minimum": 0}},
                        {"name": "timelineLimit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 1000}}],
                    "responses": {"200": _json(_ref("Call"), "the call"), **ERRORS,
                                  **NOT_FOUND},
                },
            },
            "/api/v1/calls/{call_id}/end": {
                "post": {
                    "summary": "End the call for everyone",
                    "parameters": [CALL_ID],
                    "responses": {"200": _json(_ref("Call"), "the ended call"), **ERRORS,
                                  **NOT_FOUND, **CONFLICT},
                },
            },
            "/api/v1/calls/{call_id}/tokens": {
                "post": {
                    "summary": "New join tokens (all participants, or one)",
                    "parameters": [CALL_ID],
                    "requestBody": {"required": False, "content": {"application/json": {
                        "schema": {"type": "object",
                                   "properties": {"participant": {"type": "string"}}}}}},
                    "responses": {
                        "200": _json({"type": "object", "required": ["participants"],
                                      "properties": {"participants": {
                                          "type": "array", "items": _ref("JoinToken")}}},
                                     "fresh tokens"),
                        **ERRORS, **NOT_FOUND, **CONFLICT},
                },
            },
            "/api/v1/calls/{call_id}/participants/{participant}": {
                "delete": {
                    "summary": "Remove a participant; their token no longer opens the call",
                    "parameters": [CALL_ID, {"name": "participant", "in": "path",
                                             "required": True, "schema": {"type": "string"}}],
                    "responses": {"200": _json(_ref("Call"), "the call"), **ERRORS,
                                  **NOT_FOUND, **CONFLICT},
                },
            },
            "/api/v1/recordings": {
                "get": {
                    "summary": "Calls' recordings, newest first",
                    "parameters": [
                        {"name": "since", "in": "query", "schema": {"type": "number"}},
                        {"name": "limit", "in": "query",
                         "schema": {"type": "integer", "minimum": 1, "maximum": 200}}],
                    "responses": {"200": _json({
                        "type": "object", "required": ["recordings"],
                        "properties": {"recordings": {"type": "array",
                                                      "items": _ref("Recording")}}},
                        "recordings"), **ERRORS},
                },
            },
            "/api/v1/recordings/purge": {
                "post": {
                    "summary": "Apply the retention period now (`dryRun=true`: only list)",
                    "parameters": [{"name": "dryRun", "in": "query",
                                    "schema": {"type": "string", "enum": ["true", "false"]}}],
                    "responses": {"200": _json({"type": "object"}, "what was (or would be) "
                                               "deleted"), **ERRORS},
                },
            },
            "/api/v1/recordings/{call_id}": {
                "get": {
                    "summary": "A call's recording metadata: files, checksums, problems",
                    "parameters": [CALL_ID],
                    "responses": {"200": _json(_ref("Recording"), "metadata"), **ERRORS,
                                  "404": _json(_ref("Error"), "`recording.not_found`")},
                },
            },
            "/api/v1/recordings/{call_id}/files/{name}": {
                "get": {
                    "summary": "Download one file; HTTP Range supported",
                    "parameters": [CALL_ID, {"name": "name", "in": "path", "required": True,
                                             "schema": {"type": "string"}},
                                   {"name": "Range", "in": "header",
                                    "schema": {"type": "string"}}],
                    "responses": {
                        "200": {"description": "the file",
                                "content": {"video/webm": {"schema": {"type": "string",
                                                                      "format": "binary"}}}},
                        "206": {"description": "the requested range",
                                "content": {"video/webm": {"schema": {"type": "string",
                                                                      "format": "binary"}}}},
                        "416": {"description": "unsatisfiable range"},
                        "404": _json(_ref("Error"), "`recording.not_found`"), **ERRORS},
                },
            },
            "/api/v1/recordings/{call_id}/links": {
                "post": {
                    "summary": "A signed player link for a doctor, valid one hour",
                    "parameters": [CALL_ID],
                    "responses": {"200": _json({
                        "type": "object", "required": ["url", "expiresIn"],
                        "properties": {"url": {"type": "string"},
                                       "expiresIn": {"type": "integer"}}}, "the link"),
                        "404": _json(_ref("Error"), "`recording.not_found`"), **ERRORS},
                },
            },
            "/api/v1/workstation-links": {
                "post": {
                    "summary": "A workstation link for a doctor or consultant: their open "
                               "calls, each with a fresh join link (docs/web.md)",
                    "requestBody": {"required": True, "content": {
                        "application/json": {"schema": _ref("NewWorkstationLink")}}},
                    "responses": {"201": _json(_ref("WorkstationLink"), "the link"),
                                  **ERRORS},
                },
            },
            "/api/v1/turn": {
                "get": {
                    "summary": "TURN lease pool usage (no credentials)",
                    "responses": {"200": _json({
                        "type": "object", "required": ["enabled", "size", "inUse", "leases"],
                        "properties": {
                            "enabled": {"type": "boolean"}, "size": {"type": "integer"},
                            "inUse": {"type": "integer"}, "issued": {"type": "integer"},
                            "exhausted": {"type": "integer"},
                            "leases": {"type": "array", "items": {"type": "object"}}}},
                        "pool usage"), **ERRORS},
                },
            },
            "/api/v1/calls/{call_id}/webhooks": {
                "get": {
                    "summary": "The call's webhook events (latest 50), oldest first, with "
                               "their delivery logs",
                    "parameters": [CALL_ID],
                    "responses": {"200": _json({
                        "type": "object", "required": ["events"],
                        "properties": {"events": {"type": "array",
                                                  "items": _ref("WebhookEvent")}}},
                        "events"), **ERRORS},
                },
            },
            "/api/v1/webhooks/events/{event_id}": {
                "get": {
                    "summary": "A webhook event and its delivery log",
                    "parameters": [{"name": "event_id", "in": "path", "required": True,
                                    "schema": {"type": "string"}}],
                    "responses": {"200": _json(_ref("WebhookEvent"), "the event"), **ERRORS,
                                  "404": _json(_ref("Error"), "`event.not_found`")},
                },
            },
        },
    }
