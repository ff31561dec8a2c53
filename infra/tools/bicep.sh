#!/usr/bin/env bash
# Runs the Bicep CLI pinned in BicepCli.csproj, restoring it from NuGet first if needed.
#   infra/tools/bicep.sh build infra/main.bicep --stdout
set -euo pipefail
here="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
version="$(sed -n 's/.*Azure.Bicep.CommandLine.linux-x64" Version="\[\(.*\)\]".*/\1/p' "$here/BicepCli.csproj")"
packages="${NUGET_PACKAGES:-$HOME/.nuget/packages}"
bicep="$packages/azure.bicep.commandline.linux-x64/$version/tools/bicep"
if [ ! -x "$bicep" ]; then
  dotnet restore "$here/BicepCli.csproj" --nologo -v quiet >&2
  chmod +x "$bicep" 2>/dev/null || true
fi
exec "$bicep" "$@"
