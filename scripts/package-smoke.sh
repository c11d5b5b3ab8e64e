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
dotnet pack -c Release -v q --nologo src/LoftQ.TorchSharp -o "$work/packages" --version-suffix "$suffix"
version=$(ls "$work/packages" | sed -n 's/^LoftQ\.TorchSharp\.\(.*\)\.nupkg$/\1/p' | head -1)
test -n "$version"
echo "packed LoftQ.TorchSharp $version"

mkdir "$work/app"
cd "$work/app"
dotnet new console -v q --force >/dev/null
cat > nuget.config <<XML
<?xml version="1.0" encoding="utf-8"?>
<configuration>
  <packageSources>
    <add key="loftq-local" value="$work/packages" />
  </packageSources>
</configuration>
XML
cp "$root/samples/TorchSharpQuickstart/Program.cs" Program.cs
dotnet add package LoftQ.TorchSharp --version "$version" >/dev/null
dotnet add package TorchSharp-cpu --version 0.107.0 >/dev/null
dotnet run -c Release -- "$root/tests/data/byte-llama-14m" "$work/adapter"
test -f "$work/adapter/adapter_model.safetensors"
test -f "$work/adapter/adapter_config.json"
echo "package smoke test: ok"
