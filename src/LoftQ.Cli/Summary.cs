using System.Globalization;
using LoftQNet.Pipeline;
using Spectre.Console;

namespace LoftQNet.Cli;

/// <summary>The end-of-run table: QLoRA vs LoftQ error per layer, then totals and where the output went.</summary>
internal static class Summary
{
    public static void Write(IAnsiConsole console, LoftQReport report)
    {
        var table = new Table().Border(TableBorder.Simple)
            .AddColumn("layer")
            .AddColumn("shape")
            .AddColumn("quant")
            .AddColumn(new TableColumn("QLoRA err").RightAligned())
            .AddColumn(new TableColumn("LoftQ err").RightAligned())
            .AddColumn(new TableColumn("gain").RightAligned())
            .AddColumn(new TableColumn("pass").RightAligned())
            .AddColumn(new TableColumn("s").RightAligned());
        foreach (LayerReport l in report.Layers)
        {
            table.AddRow(
                Markup.Escape(l.Name),
                $"{l.Shape[0]}x{l.Shape[1]}",
                l.Quantizer,
                F(l.QLoRAError),
                F(l.RelativeError),
                Gain(l.QLoRAError, l.RelativeError),
                l.BestPass.ToString(CultureInfo.InvariantCulture),
                l.Seconds.ToString("F2", CultureInfo.InvariantCulture));
        }

        table.AddEmptyRow();
        table.AddRow(
            $"mean over {report.Layers.Count} targets", string.Empty,
            report.AverageBits.ToString("0.##", CultureInfo.InvariantCulture) + " bits",
            F(report.MeanQLoRAError), F(report.MeanLoftQError), Gain(report.MeanQLoRAError, report.MeanLoftQError),
            string.Empty, string.Empty);
        console.Write(table);
        console.WriteLine(string.Create(CultureInfo.InvariantCulture,
            $"Mean relative error ||W - Q - BA|| / ||W||: QLoRA {report.MeanQLoRAError:F4} -> LoftQ {report.MeanLoftQError:F4} ({report.Settings.Policy}, r={report.Settings.Rank}, T={report.Settings.Iterations}) in {report.Seconds:F2} s{(report.Settings.Device == "cpu" ? string.Empty : " on " + report.Settings.Device)}"));
        console.WriteLine($"Output: {report.Output}");
        console.WriteLine("  backbone        config + quantized weights (same sharding as the input)");
        console.WriteLine("  loftq_init/     PEFT LoRA adapter (adapter_config.json + adapter_model.safetensors)");
        console.WriteLine("  loftq_report.json");
    }

    private static string F(double v) => v.ToString("F4", CultureInfo.InvariantCulture);

    private static string Gain(double qlora, double loftq) =>
        qlora > 0 ? ((1 - (loftq / qlora)) * 100).ToString("F1", CultureInfo.InvariantCulture) + "%" : "-";
}
