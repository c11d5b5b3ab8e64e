#!/usr/bin/env bash
# Packs LoftQ and LoftQ.TorchSharp into a local folder, creates a fresh console app outside the repository that
# references LoftQ.TorchSharp + TorchSharp-cpu from it (as a NuGet user would), and runs the README's TorchSharp
# example (samples/TorchSharpQuickstart) on the bundled model; then a second app with only the LoftQ package runs
# samples/CustomQuantizer (custom quantizers written against the public API alone). Exits non-zero if any step fails.
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

# What a NuGet user gets besides the DLL: the README, a symbols package, and the source commit in the nuspec
# (SourceLink; the repository URL too when the clone has a URL remote).
for id in LoftQ LoftQ.TorchSharp; do
  test -f "$work/packages/$id.$version.snupkg"
  unzip -l "$work/packages/$id.$version.nupkg" | grep -q ' README.md$'
  if commit=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
    unzip -p "$work/packages/$id.$version.nupkg" "$id.nuspec" | grep -q "commit=\"$commit\""
  fi
done

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

# The core package alone (no TorchSharp): a user's own quantizers through the public API only (samples/CustomQuantizer).
mkdir "$work/core-app"
cd "$work/core-app"
dotnet new console --force >/dev/null
cp "$work/app/nuget.config" nuget.config
cp "$root/samples/CustomQuantizer/Program.cs" Program.cs
dotnet add package LoftQ --version "$version" | tail -2
dotnet run -c Release | tee "$work/core-app.log"
grep -q "custom quantizers: ok" "$work/core-app.log"
echo "package smoke test: ok"
