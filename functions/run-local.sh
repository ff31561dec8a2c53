#!/usr/bin/env bash
# Runs the Functions app locally: Azurite from tests/azurite, then `func start` with local.settings.json
# (created from local.settings.json.example on first run: Azurite + the bundled tiny-shapes model); without Core Tools, the real
# Functions host from ../shared/functions-host (unpacked into functions/.functions-host), which enforces function
# keys: it prints the base URL and the key. Ctrl+C stops everything it started.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)

# Core Tools if installed; else the Functions host built from source beside the checkout (../shared/functions-host).
host_archive=$(ls "$root"/../shared/functions-host/functions-host-*.tgz 2>/dev/null | head -n 1 || true)
if ! command -v func >/dev/null 2>&1 && [ -z "$host_archive" ]; then
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
host_pid=""
worker_pids=""
stop_all() {
  if [ -n "$host_pid" ]; then
    worker_pids="$worker_pids $(cat /proc/"$host_pid"/task/*/children 2>/dev/null || true)"
    kill -TERM "$host_pid" 2>/dev/null && wait "$host_pid" 2>/dev/null
  fi
  for pid in $worker_pids; do kill -TERM "$pid" 2>/dev/null || true; done # the host's worker child outlives a hard-killed host
  [ -n "$azurite_pid" ] && kill "$azurite_pid" 2>/dev/null
  return 0
}
trap stop_all EXIT
trap "exit 130" INT TERM # so Ctrl+C and SIGTERM run stop_all too
if ! (exec 3<>/dev/tcp/127.0.0.1/10001) 2>/dev/null; then
  (cd "$root/tests/azurite" && [ -d node_modules ] || npm ci --no-audit --no-fund --silent)
  mkdir -p "$root/tests/azurite/data"
  "$root/tests/azurite/node_modules/.bin/azurite" --silent --skipApiVersionCheck --disableTelemetry --location "$root/tests/azurite/data" \
    --blobHost 127.0.0.1 --queueHost 127.0.0.1 --tableHost 127.0.0.1 &
  azurite_pid=$!
  for _ in $(seq 1 50); do (exec 3<>/dev/tcp/127.0.0.1/10001) 2>/dev/null && break; sleep 0.2; done
  echo "run-local: Azurite started (pid $azurite_pid)"
fi

if command -v func >/dev/null 2>&1; then
  cd "$root/functions/SdFunctions.Functions"
  echo "run-local: the playground page will be at http://localhost:7071/api/playground (Core Tools needs no key locally)"
  func start # Core Tools does not check function keys locally
  exit
fi

echo "run-local: Core Tools (func) is not installed; running the app under the Functions host from $host_archive instead"
dotnet build "$root/functions/SdFunctions.Functions" -v q -nologo
app="$root/functions/SdFunctions.Functions/bin/Debug/net10.0"
work="$root/functions/.functions-host" # git-ignored
if [ ! -f "$work/debug/Microsoft.Azure.WebJobs.Script.WebHost.dll" ]; then
  mkdir -p "$work" && tar xzf "$host_archive" -C "$work"
fi
mkdir -p "$work/debug/workers" "$work/secrets"
# This host checks function keys (Core Tools does not): one key, made on first run and kept.
[ -f "$work/function-key" ] || head -c 24 /dev/urandom | base64 | tr -d '/+=' > "$work/function-key"
key=$(cat "$work/function-key")
cat > "$work/secrets/host.json" <<JSON
{"masterKey":{"name":"master","value":"master-$key","encrypted":false},"functionKeys":[{"name":"default","value":"$key","encrypted":false}]}
JSON

# local.settings.json's Values become the environment, as Core Tools would pass them.
while IFS= read -r -d '' name && IFS= read -r -d '' value; do
  export "$name=$value"
done < <(node -e 'const v = require(process.argv[1]).Values || {}; for (const [k, x] of Object.entries(v)) process.stdout.write(k + "\0" + x + "\0");' "$root/local.settings.json")
port=${PORT:-7071}
export AzureWebJobsScriptRoot="$app" AZURE_FUNCTIONS_ENVIRONMENT=Development ASPNETCORE_URLS="http://127.0.0.1:$port" \
       AzureWebJobsSecretStorageType=files FUNCTIONS_SECRETS_PATH="$work/secrets"
# (a name with a dash, so set through env; CONTAINER_NAME would make the host think it is on Linux Consumption)
(cd "$work/debug" && exec env -u CONTAINER_NAME "languageWorkers__dotnet-isolated__workerDirectory=$app" dotnet Microsoft.Azure.WebJobs.Script.WebHost.dll) &
host_pid=$!
for _ in $(seq 1 120); do curl -fs "http://127.0.0.1:$port/api/health" >/dev/null 2>&1 && break; sleep 0.5; done
cat <<MSG
run-local: the app runs at http://127.0.0.1:$port/api (this host enforces function keys)
  key: $key   (send it as ?code=$key or the x-functions-key header; /api/health needs none)
  for the curl examples of docs/api.md: export base=http://127.0.0.1:$port/api key=$key
  e.g. curl -s -X POST "http://127.0.0.1:$port/api/generations?code=$key" -H 'Content-Type: application/json' -d '{"prompt": "a fox", "steps": 4}'
  or in a browser: http://127.0.0.1:$port/api/playground (paste the key into "Function key")
  Ctrl+C stops the host, its worker and Azurite.
MSG
wait "$host_pid"
