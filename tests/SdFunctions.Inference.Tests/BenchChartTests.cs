using System.Globalization;
using System.Xml.Linq;
using SdFunctions.Cli;
using SdFunctions.Cli.Bench;

namespace SdFunctions.Inference.Tests;

/// <summary>BENCHMARKS.svg: drawn to scale from the report, and the committed report and chart are what the committed figures draw.</summary>
public class BenchChartTests
{
    private static readonly string Checkout = FindCheckout();
    private static readonly XNamespace Svg = "http://www.w3.org/2000/svg";

    private static string FindCheckout()
    {
        for (var dir = new DirectoryInfo(AppContext.BaseDirectory); dir is not null; dir = dir.Parent)
            if (File.Exists(Path.Combine(dir.FullName, "SdFunctions.sln"))) return dir.FullName;
        throw new DirectoryNotFoundException("SdFunctions.sln not found above the test binaries.");
    }

    [Fact]
    public async Task EachBarIsItsFigureDrawnToOneScalePerChart()
    {
        var report = await BenchReport.ReadAsync(Path.Combine(Checkout, "BENCHMARKS.json"), default);
        var svg = XDocument.Parse(BenchChart.Render(report));
        Assert.Equal(Svg + "svg", svg.Root!.Name);
        var bars = svg.Descendants(Svg + "g").Where(g => (string?)g.Attribute("class") == "bar").ToList();

        var expected = report.TimeToImage.Select(i => (i.Label, i.ImageS)).Concat(report.Variants.Select(v => (v.Key, v.Value.UnetStepS))).ToList();
        Assert.Equal(expected.Select(e => e.Item1), bars.Select(b => (string)b.Attribute("data-label")!));
        Assert.Equal(expected.Select(e => Math.Round(e.Item2, 2)), bars.Select(b => double.Parse((string)b.Attribute("data-seconds")!, CultureInfo.InvariantCulture)));

        // Pixels per second are the same for every bar of a chart (the image bars' segments: denoise + decode make the whole).
        var scales = bars.Zip(expected, (bar, e) => bar.Elements(Svg + "rect").Sum(r => double.Parse((string)r.Attribute("width")!, CultureInfo.InvariantCulture)) / e.Item2).ToList();
        foreach (var chart in new[] { scales.Take(report.TimeToImage.Count).ToList(), scales.Skip(report.TimeToImage.Count).ToList() })
            Assert.All(chart, scale => Assert.Equal(chart[0], scale, 0.01)); // widths are written to 0.01 px
        Assert.Equal(2, bars[0].Elements(Svg + "rect").Count()); // denoise and decode
        Assert.Contains(report.Machine.Cpu, svg.Root.Value);
    }

    [Fact]
    public async Task TheCommittedReportAndChartAreWhatTheCommittedFiguresDraw()
    {
        // `sdf bench` writes the three together; `--from-json` draws the report and chart again from the figures alone.
        string dir = Fixtures.TempDirectory("bench-chart");
        Directory.CreateDirectory(dir);
        string md = Path.Combine(dir, "BENCHMARKS.md");
        var stderr = new StringWriter();
        int code = await CliApp.RunAsync(["bench", "--from-json", Path.Combine(Checkout, "BENCHMARKS.json"), "--out", md], TextWriter.Null, stderr);
        Assert.True(code == CliApp.Ok, stderr.ToString());
        Assert.Equal(File.ReadAllText(Path.Combine(Checkout, "BENCHMARKS.md")), File.ReadAllText(md));
        Assert.Equal(File.ReadAllText(Path.Combine(Checkout, "BENCHMARKS.svg")), File.ReadAllText(Path.Combine(dir, "BENCHMARKS.svg")));
        Assert.Contains("](BENCHMARKS.svg)", File.ReadAllText(md));
    }

    [Fact]
    public async Task AMissingOrForeignJsonIsAClearError()
    {
        string dir = Fixtures.TempDirectory("bench-chart-bad");
        Directory.CreateDirectory(dir);
        var stderr = new StringWriter();
        Assert.Equal(CliApp.BadInput, await CliApp.RunAsync(["bench", "--from-json", Path.Combine(dir, "none.json")], TextWriter.Null, stderr));
        Assert.Contains("--from-json", stderr.ToString());
        string foreign = Path.Combine(dir, "package.json");
        await File.WriteAllTextAsync(foreign, """{"name": "x"}""");
        stderr = new StringWriter();
        Assert.Equal(CliApp.Failed, await CliApp.RunAsync(["bench", "--from-json", foreign, "--out", Path.Combine(dir, "B.md")], TextWriter.Null, stderr));
        Assert.Contains("is not a report sdf bench wrote", stderr.ToString());
        Assert.False(File.Exists(Path.Combine(dir, "B.md")));
    }
}
