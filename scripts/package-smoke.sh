#!/usr/bin/env bash
# Packs LoftQ and LoftQ.TorchSharp into a local folder, creates a fresh console app outside the repository that
# references LoftQ.TorchSharp + TorchSharp-cpu from it (as a NuGet user would), and runs the README's TorchSharp
# example (samples/TorchSharpQuickstart) on the bundled model. Exits non-zero if any step fails or the adapter is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
work=$(mktemp -d /tmp/loftq-package-smoke.XXXXXX)
trap 'rm -rf "$work"' EXIT
# A unique version per run, so the global package cache never serves an older build of the same version.
suffix="smoke.$(date +%s)"
for project in src/LoftQ src/LoftQ.TorchSharp; do
  dotnet pack -c Release -v q --nologo "$project" -o "$work/packages" --version-suffix "$suffix"
done
version=$(ls "$work/packages" | sed -n 's/^LoftQ\.TorchSharp\.\(.*\)\.nupkg$/\1/p' | head -1)
test -n "$version"
echo "packed LoftQ.TorchSharp $version"

mkdir "$work/app"
cd "$work/app"
dotnet new console --force >/dev/null
cat > nuget.config <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="loftq-local" value="$work/packages" />
  </packageSources>
</configuration>
XML
cp "$root/samples/TorchSharpQuickstart/Program.cs" Program.cs
dotnet add package LoftQ.TorchSharp --version "$version" | tail -2
dotnet add package TorchSharp-cpu --version 0.107.0 | tail -2
dotnet run -c Release -- "$root/tests/data/byte-llama-14m" "$work/adapter"
test -f "$work/adapter/adapter_model.safetensors"
test -f "$work/adapter/adapter_config.json"
echo "package smoke test: ok"
