#!/usr/bin/env bash
# The Crucible API with curl: submit the main job, follow its events, download a checkpoint.
#   crucible serve --port 8080 &            (from the repository root)
#   CRUCIBLE_TOKEN=crk_... examples/api.sh  (no token needed while none exists, on 127.0.0.1)
# See docs/server.md.
set -euo pipefail
URL="${CRUCIBLE_URL:-http://127.0.0.1:8080}"
AUTH=()
[ -n "${CRUCIBLE_TOKEN:-}" ] && AUTH=(-H "Authorization: Bearer $CRUCIBLE_TOKEN")
cd "$(dirname "$0")/.."

curl -fsS "$URL/healthz"; echo
# The main job as JSON (relative paths resolve against the server's working directory).
JOB=$(python3 -c 'import json,sys,tomllib; print(json.dumps(tomllib.load(open(sys.argv[1],"rb"))))' \
  examples/dates-local.toml)
SUBMITTED=$(curl -fsS "${AUTH[@]}" -H "Content-Type: application/json" \
  -H "Idempotency-Key: api-sh-$(date +%Y%m%d)" --data "$JOB" "$URL/v1/jobs")
echo "$SUBMITTED"
ID=$(python3 -c 'import json,sys; print(json.load(sys.stdin)["job_id"])' <<<"$SUBMITTED")

# Server-Sent Events until the job ends (add -H "Last-Event-ID: N" to resume after event N).
curl -fsSN "${AUTH[@]}" "$URL/v1/jobs/$ID/events" | grep --line-buffered -E '^(event|data): ' \
  | grep --line-buffered -m1 -A1 '^event: end' || true

curl -fsS "${AUTH[@]}" "$URL/v1/jobs/$ID"; echo
curl -fsS "${AUTH[@]}" "$URL/v1/jobs/$ID/artifacts"; echo
FILE=$(curl -fsS "${AUTH[@]}" "$URL/v1/jobs/$ID/artifacts" \
  | python3 -c 'import json,sys; print(next(a["path"] for a in json.load(sys.stdin)["items"] if a["path"].endswith(".safetensors")))')
curl -fsS "${AUTH[@]}" -D /tmp/crucible-headers -o /tmp/crucible-checkpoint "$URL/v1/jobs/$ID/artifacts/$FILE"
echo "server sha256: $(grep -i '^x-checksum-sha256' /tmp/crucible-headers | tr -d '\r' | cut -d' ' -f2)"
echo "local  sha256: $(sha256sum /tmp/crucible-checkpoint | cut -d' ' -f1)"
