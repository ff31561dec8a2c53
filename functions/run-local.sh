#!/usr/bin/env bash
# Runs the Functions app locally: Azurite from tests/azurite, then `func start` with local.settings.json
# (created from local.settings.json.example on first run: Azurite + the tiny bundle). Ctrl+C stops both.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

if ! command -v func >/dev/null 2>&1; then
  cat >&2 <<'MSG'
run-local: Azure Functions Core Tools (`func`) is not installed, so the Functions host cannot start here.
  Install Core Tools v4 (https://learn.microsoft.com/azure/azure-functions/functions-run-local), then run this again.
  Without it you can still: generate images with the CLI (see README), and run the tests (`dotnet test SdFunctions.sln`),
  which drive the same function classes against Azurite.
MSG
  exit 1
fi

[ -f "$root/local.settings.json" ] || { cp "$root/local.settings.json.example" "$root/local.settings.json"; echo "run-local: created local.settings.json from the example"; }
grep -q '"JobsStorage"' "$root/local.settings.json" || { echo "run-local: local.settings.json has no JobsStorage (the queue trigger's connection); add \"JobsStorage\": \"UseDevelopmentStorage=true\" as in the example"; exit 1; }

azurite_pid=""
if ! (exec 3<>/dev/tcp/127.0.0.1/10001) 2>/dev/null; then
  (cd "$root/tests/azurite" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
  mkdir -p "$root/tests/azurite/data"
  "$root/tests/azurite/node_modules/.bin/azurite" --silent --skipApiVersionCheck --location "$root/tests/azurite/data" \
    --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 &
  azurite_pid=$!
  trap '[ -n "$azurite_pid" ] && kill "$azurite_pid" 2>/dev/null' EXIT
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/10001) 2>/dev/null && break; sleep 0.2; done
  echo "run-local: Azurite started (pid $azurite_pid)"
fi

cd "$root/functions/SdFunctions.Functions"
func start
