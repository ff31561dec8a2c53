using System.Globalization;
using System.Xml.Linq;

namespace SdFunctions.Cli.Bench;

/// <summary>
/// BENCHMARKS.svg: the report's two headline figures as bar charts — time to a 512² image per recipe (split into denoise and
/// decode) and the UNet step per variant. Plain SVG written directly (no charting package: two bar charts are a few dozen
/// lines), built with XElement so every label is escaped. Each bar carries its figure in data-seconds, for tests and tools.
/// </summary>
public static class BenchChart
{
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";
    private const int Width = 1000, LabelWidth = 270, BarWidth = 420, RowHeight = 26, BarHeight = 16;
    private const string Denoise = "#3b6fb6", Decode = "#e08a2c", Unet = "#4a9a5b", Grid = "#d9dce1", Text = "#24292f", Muted = "#57606a";

    /// <summary>A bar's quality beside its speed: the judge's accuracy on tiny-shapes, FP32's in brackets.</summary>
    private static string Judged(QualityFigures? q) =>
        q is null ? "" : $" · judge {q.Candidate.Share.ToString("P0", CultureInfo.InvariantCulture)} ({q.Fp32.Share.ToString("P0", CultureInfo.InvariantCulture)})";

    public static string Render(BenchReport report)
    {
        var body = new List<XElement>();
        double y = 0;
        if (report.TimeToImage.Count > 0)
        {
            double a = report.TimeToImage[0].ImageS;
            y = Panel(body, y, "Time to a 512² image, seconds (lower is better)",
                [.. report.TimeToImage.Select(i => new Bar(i.Label, [(i.EncodeS + i.DenoiseS, Denoise), (i.DecodeS, Decode)], i.ImageS,
                    (i == report.TimeToImage[0] ? $"{Seconds(i.ImageS)} s" : $"{Seconds(i.ImageS)} s · {a / i.ImageS:F1}× (a)") + Judged(i.Quality)))],
                [("text encoder + denoise", Denoise), ("decode", Decode)]);
        }
        if (report.Variants.Count > 0)
        {
            y = Panel(body, y, "UNet step (batch 2, 512²), seconds · speed-up vs fp32", [.. report.Variants.Select(v => new Bar(v.Key, [(v.Value.UnetStepS, Unet)], v.Value.UnetStepS,
                (v.Value.SpeedupVsFp32 is { } x ? $"{Seconds(v.Value.UnetStepS)} s · {x:F2}×" : $"{Seconds(v.Value.UnetStepS)} s") + Judged(v.Value.Quality)))], []);
        }
        y += 8;
        body.Add(Label(12, y, $"sdf bench, {report.CreatedAt:yyyy-MM-dd}: {report.Machine.Cpu}, {report.Machine.PhysicalCores} cores, ONNX Runtime {report.Machine.OrtVersion}", Muted, 11));
        body.Add(Label(12, y + 15, report.Model, Muted, 11));
        y += 27;

        string summary = string.Join("; ", report.TimeToImage.Select(i => $"{i.Label}: {Seconds(i.ImageS)} s")
            .Concat(report.Variants.Select(v => $"UNet step {v.Key}: {Seconds(v.Value.UnetStepS)} s")));
        var svg = new XElement(Svg + "svg",
            new XAttribute("width", Width), new XAttribute("height", Math.Ceiling(y)), new XAttribute("viewBox", $"0 0 {Width} {Math.Ceiling(y)}"),
            new XAttribute("role", "img"), new XAttribute("aria-labelledby", "title desc"),
            new XAttribute("font-family", "system-ui, -apple-system, 'Segoe UI', Roboto, 'DejaVu Sans', sans-serif"),
            new XElement(Svg + "title", new XAttribute("id", "title"), "SdFunctions benchmark: time to a 512² image per recipe, UNet step per variant"),
            new XElement(Svg + "desc", new XAttribute("id", "desc"), summary),
            new XElement(Svg + "rect", new XAttribute("width", "100%"), new XAttribute("height", "100%"), new XAttribute("fill", "#ffffff")),
            body);
        return new XDocument(svg).ToString() + "\n";
    }

    private sealed record Bar(string Label, IReadOnlyList<(double Seconds, string Colour)> Segments, double Total, string Value);

    /// <summary>One bar chart from <paramref name="top"/>: title, legend, a bar per row on a shared axis, ticks; returns its bottom.</summary>
    private static double Panel(List<XElement> body, double top, string title, IReadOnlyList<Bar> bars, IReadOnlyList<(string Name, string Colour)> legend)
    {
        double y = top + 24;
        body.Add(Label(12, y, title, Text, 15, bold: true));
        if (legend.Count > 0) y += 20;
        double x = LabelWidth;
        foreach (var (name, colour) in legend)
        {
            body.Add(new XElement(Svg + "rect", new XAttribute("x", Number(x)), new XAttribute("y", Number(y - 10)), new XAttribute("width", 10),
                new XAttribute("height", 10), new XAttribute("fill", colour)));
            body.Add(Label(x + 14, y, name, Muted, 12));
            x += 30 + 7 * name.Length;
        }
        y += 12;
        double axisMax = NiceCeiling(bars.Max(b => b.Total));
        double scale = BarWidth / axisMax, chartTop = y;
        double[] ticks = [.. Enumerable.Range(0, 6).Select(i => axisMax * i / 5)];
        double chartBottom = chartTop + bars.Count * RowHeight;
        foreach (double tick in ticks)
            body.Add(new XElement(Svg + "line", new XAttribute("x1", Number(LabelWidth + tick * scale)), new XAttribute("x2", Number(LabelWidth + tick * scale)),
                new XAttribute("y1", Number(chartTop)), new XAttribute("y2", Number(chartBottom)), new XAttribute("stroke", Grid)));
        foreach (var bar in bars)
        {
            double barTop = y + (RowHeight - BarHeight) / 2.0;
            body.Add(Label(LabelWidth - 8, barTop + BarHeight - 3, bar.Label, Text, 12, anchor: "end"));
            double left = LabelWidth;
            var group = new XElement(Svg + "g", new XAttribute("class", "bar"), new XAttribute("data-label", bar.Label),
                new XAttribute("data-seconds", Number(bar.Total)));
            foreach (var (seconds, colour) in bar.Segments)
            {
                group.Add(new XElement(Svg + "rect", new XAttribute("x", Number(left)), new XAttribute("y", Number(barTop)),
                    new XAttribute("width", Number(seconds * scale)), new XAttribute("height", BarHeight), new XAttribute("fill", colour)));
                left += seconds * scale;
            }
            body.Add(group);
            body.Add(Label(left + 6, barTop + BarHeight - 3, bar.Value, Text, 12));
            y += RowHeight;
        }
        foreach (double tick in ticks)
            body.Add(Label(LabelWidth + tick * scale, chartBottom + 14, Seconds(tick), Muted, 11, anchor: "middle"));
        return chartBottom + 22;
    }

    /// <summary>The smallest 1, 2 or 5 × 10^k at or above the value: a round axis end.</summary>
    private static double NiceCeiling(double value)
    {
        double magnitude = Math.Pow(10, Math.Floor(Math.Log10(value)));
        foreach (double step in new[] { 1.0, 2, 5, 10 })
            if (step * magnitude >= value) return step * magnitude;
        return 10 * magnitude;
    }

    private static XElement Label(double x, double y, string text, string colour, int size, bool bold = false, string anchor = "start") =>
        new(Svg + "text", new XAttribute("x", Number(x)), new XAttribute("y", Number(y)), new XAttribute("fill", colour),
            new XAttribute("font-size", size), new XAttribute("text-anchor", anchor), bold ? new XAttribute("font-weight", "600") : null, text);

    private static string Number(double value) => value.ToString("0.##", CultureInfo.InvariantCulture);

    private static string Seconds(double value) => value.ToString(value < 10 ? "0.##" : "0.#", CultureInfo.InvariantCulture);
}
