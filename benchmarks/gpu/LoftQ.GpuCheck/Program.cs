using System.Globalization;
using System.Text.Json;
using LoftQNet;
using LoftQNet.Cuda;
using LoftQNet.GpuCheck;

// LoftQ.GpuCheck [check|bench|all] [--model DIR] [--blocks N] [--json FILE] [--small]
// check: the agreement checks (exit 1 if any fails); bench: the issue's GPU measurements; all: both.
// --small: smaller check problems, for an emulated device (LoftQ.Cuda.Tests' fake CUDA stack).
CultureInfo.DefaultThreadCurrentCulture = CultureInfo.InvariantCulture;
string mode = args.Length > 0 && !args[0].StartsWith("--", StringComparison.Ordinal) ? args[0] : "all";
string? model = Option("--model");
int blocks = int.Parse(Option("--blocks") ?? "32", CultureInfo.InvariantCulture);
string? jsonPath = Option("--json");
DeviceChecks.Small = args.Contains("--small");
Environment.SetEnvironmentVariable("LOFTQ_CUDA_UNVERIFIED", "1"); // this program is what verifies the GPU path

Console.WriteLine(LoftQ.Describe());
var checks = new List<CheckResult>();
var measurements = new List<Measurement>();
CheckResult exports = DeviceChecks.ExportsResolve();
checks.Add(exports);
Print(exports);
if (!CudaProbe.Current.Available || !exports.Passed)
{
    return Finish(1);
}

CudaAccelerator gpu;
try
{
    var clock = System.Diagnostics.Stopwatch.StartNew();
    gpu = DeviceChecks.Open();
    Print(new CheckResult("open", true, $"{gpu.Name}; NVRTC compile {gpu.Context.CompileSeconds:F2} s", clock.Elapsed.TotalSeconds));
}
catch (Exception e)
{
    Print(new CheckResult("open", false, $"{e.GetType().Name}: {e.Message}", 0));
    checks.Add(new CheckResult("open", false, e.Message, 0));
    return Finish(1);
}

using (gpu)
{
    if (mode is "check" or "all")
    {
        foreach ((string _, Func<CudaAccelerator, CheckResult> run) in DeviceChecks.OnDevice)
        {
            CheckResult r = run(gpu);
            checks.Add(r);
            Print(r);
        }

        if (model is not null)
        {
            CheckResult r = DeviceChecks.PipelineAgreesWithCpu(model);
            checks.Add(r);
            Print(r);
        }
    }

    if (mode is "bench" or "all")
    {
        Measure(() => DeviceBenchmarks.Quantizer(gpu));
        Measure(() => DeviceBenchmarks.Sgemm(gpu));
        Measure(() => DeviceBenchmarks.Profile(gpu));
        Measure(() => DeviceBenchmarks.Agreement4096(gpu));
        Measure(() => DeviceBenchmarks.Llama7B(gpu, blocks, null));
        Measure(() => DeviceBenchmarks.Llama7BConcurrent(gpu, blocks, null));
        Measure(() => DeviceBenchmarks.Llama7BConcurrent(gpu, blocks, LoftQNet.Quantization.BlockScaleSearch.Default));
        gpu.SmallStep = LoftQNet.Cuda.Device.SmallStepKind.Gram; // the faster host step, for comparison
        Measure(() => DeviceBenchmarks.Llama7BConcurrent(gpu, blocks, null));
        gpu.SmallStep = LoftQNet.Cuda.Device.SmallStepKind.Svd;
    }
}

// On the emulated device (LoftQ.Cuda.Tests' fake CUDA stack) every device allocation must have been freed by now.
if (System.Runtime.InteropServices.NativeLibrary.TryGetExport(LoftQNet.Cuda.Native.CudaLibraries.Load(LoftQNet.Cuda.Native.CudaLibraries.Driver).Handle, "fake_cuda_live_allocations", out nint live))
{
    long count;
    unsafe
    {
        count = ((delegate* unmanaged<long>)live)();
    }

    var leak = new CheckResult("no-leaks", count == 0, $"{count} device allocations live after the accelerator was disposed", 0);
    checks.Add(leak);
    Print(leak);
}

return Finish(checks.All(c => c.Passed) ? 0 : 1);

string? Option(string name)
{
    int i = Array.IndexOf(args, name);
    return i >= 0 && i + 1 < args.Length ? args[i + 1] : null;
}

void Print(CheckResult r) => Console.WriteLine($"| {(r.Passed ? "pass" : "FAIL")} | {r.Name} | {r.Seconds:F2} s | {r.Detail} |");

void Measure(Func<IEnumerable<Measurement>> run)
{
    try
    {
        foreach (Measurement m in run())
        {
            measurements.Add(m);
            Console.WriteLine($"| {m.Name} | {m.Value:G5} {m.Unit} | {m.Note} |");
        }
    }
    catch (Exception e)
    {
        Console.WriteLine($"| benchmark failed | {e.GetType().Name}: {e.Message} | |");
        checks.Add(new CheckResult("benchmark", false, e.Message, 0));
    }
}

int Finish(int code)
{
    if (jsonPath is not null)
    {
        // Written by hand: the trimmed, self-contained publish has no reflection-based JSON serialisation.
        using var stream = File.Create(jsonPath);
        using var json = new Utf8JsonWriter(stream, new JsonWriterOptions { Indented = true });
        json.WriteStartObject();
        json.WriteString("date", DateTime.UtcNow.ToString("u", CultureInfo.InvariantCulture));
        json.WriteString("describe", LoftQ.Describe());
        json.WriteStartArray("checks");
        foreach (CheckResult c in checks)
        {
            json.WriteStartObject();
            json.WriteString("name", c.Name);
            json.WriteBoolean("passed", c.Passed);
            json.WriteString("detail", c.Detail);
            json.WriteNumber("seconds", c.Seconds);
            json.WriteEndObject();
        }

        json.WriteEndArray();
        json.WriteStartArray("measurements");
        foreach (Measurement m in measurements)
        {
            json.WriteStartObject();
            json.WriteString("name", m.Name);
            json.WriteNumber("value", m.Value);
            json.WriteString("unit", m.Unit);
            json.WriteString("note", m.Note);
            json.WriteEndObject();
        }

        json.WriteEndArray();
        json.WriteEndObject();
    }

    Console.WriteLine(code == 0 ? "ALL CHECKS PASSED" : "SOME CHECKS FAILED");
    return code;
}
