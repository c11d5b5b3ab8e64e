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
for project in src/LoftQ src/LoftQ.TorchSharp src/LoftQ.Cuda; do
  dotnet pack -c Release -v q --nologo "$project" -o "$work/packages" --version-suffix "$suffix"
done
version=$(ls "$work/packages" | sed -n 's/^LoftQ\.TorchSharp\.\(.*\)\.nupkg$/\1/p' | head -1)
test -n "$version"
echo "packed LoftQ.TorchSharp $version"

# What a NuGet user gets besides the DLL: the README, a symbols package, and the source commit in the nuspec
# (SourceLink; the repository URL too when the clone has a URL remote).
for id in LoftQ LoftQ.TorchSharp LoftQ.Cuda; do
  test -f "$work/packages/$id.$version.snupkg"
  # Listed to a file first: `grep -q` in a pipe exits at the first match, and with pipefail the writer's SIGPIPE
  # would fail the script whenever the listing is longer than one pipe buffer.
  unzip -l "$work/packages/$id.$version.nupkg" > "$work/$id.list"
  grep -q ' README.md$' "$work/$id.list"
  if commit=$(git -C "$root" rev-parse HEAD 2>/dev/null); then
    unzip -p "$work/packages/$id.$version.nupkg" "$id.nuspec" > "$work/$id.nuspec"
    grep -q "commit=\"$commit\"" "$work/$id.nuspec"
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

# LoftQ.Cuda from its package: the core finds it at run time (no compile-time reference) and explains the machine.
mkdir "$work/cuda-app"
cd "$work/cuda-app"
dotnet new console --force >/dev/null
cp "$work/app/nuget.config" nuget.config
echo 'System.Console.Write(LoftQNet.LoftQ.Describe());' > Program.cs
dotnet add package LoftQ.Cuda --version "$version" | tail -2
dotnet run -c Release | tee "$work/cuda-app.log"
grep -q "^CUDA: " "$work/cuda-app.log"
if grep -q "not part of this application" "$work/cuda-app.log"; then
  echo "LoftQ.Cuda was not found at run time from its package" >&2
  exit 1
fi
echo "package smoke test: ok"
