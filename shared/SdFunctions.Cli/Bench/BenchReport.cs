using System.Globalization;
using System.Runtime.InteropServices;
using System.Text;
using System.Text.Json;
using System.Text.Json.Serialization;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Cli.Bench;

/// <summary>One variant's figures (seconds, bytes), all measured in the same bench run.</summary>
public sealed record VariantResult
{
    public required string Description { get; init; }
    public required double UnetStepS { get; init; }
    public required double FirstStepS { get; init; }
    public required double StepS { get; init; }
    public required double OverheadPerStepS { get; init; }
    public required double TextEncoderS { get; init; }
    public required double VaeDecodeS { get; init; }
    public required double LoadColdS { get; init; }
    public required double LoadWarmS { get; init; }

    /// <summary>The warm-up runs the service does after creating the sessions (one of each model).</summary>
    public required double WarmUpS { get; init; }
    public required bool LoadWarmFromCache { get; init; }
    public required long PeakRssBytes { get; init; }
    public required long LoadColdPeakRssBytes { get; init; }
    public required long UnetBytes { get; init; }

    /// <summary>Text encoder + UNet + VAE decoder on disk: what stays resident as weights.</summary>
    public required long ModelBytes { get; init; }
    [JsonPropertyName("e2e_20_dpmpp_s")]
    public double? E2e20DpmppS { get; init; }

    [JsonPropertyName("e2e_50_pndm_s")]
    public double? E2e50PndmS { get; init; }
    public double? SpeedupVsFp32 { get; init; }

    /// <summary>The variant's optimizer recipe on the trained tiny-shapes model (null: not measured).</summary>
    public QualityFigures? Quality { get; init; }

    /// <summary>The pipeline's own time per step (scheduler, guidance, copies) as a share of the step.</summary>
    public double OverheadFraction => OverheadPerStepS / StepS;

    public static VariantResult From(BenchVariant variant, ProbeResult cold, ProbeResult warm, (long Unet, long Models) bytes) => new()
    {
        Description = variant.Description,
        UnetStepS = warm.PipelinePart.Steps.UnetStepS,
        FirstStepS = warm.PipelinePart.FirstStepS,
        StepS = warm.PipelinePart.Steps.StepS,
        OverheadPerStepS = warm.PipelinePart.Steps.OverheadPerStepS,
        TextEncoderS = warm.PipelinePart.TextEncoderS,
        VaeDecodeS = warm.PipelinePart.VaeDecodeS,
        LoadColdS = cold.LoadPart.SessionsS,
        LoadWarmS = warm.LoadPart.SessionsS,
        WarmUpS = warm.PipelinePart.WarmUpS,
        LoadWarmFromCache = warm.LoadPart.AllFromCache,
        PeakRssBytes = warm.PeakRssBytes,
        LoadColdPeakRssBytes = cold.PeakRssBytes,
        UnetBytes = bytes.Unet,
        ModelBytes = bytes.Models,
        E2e20DpmppS = warm.PipelinePart.E2e20DpmppS,
        E2e50PndmS = warm.PipelinePart.E2e50PndmS,
    };
}

/// <summary>One time-to-image row: a recipe, its whole generation (median of its runs) split into phases, and the process's peak RSS.</summary>
/// <param name="GenerationPeakBytes">The largest of the generations' own peaks (what a job records), null where it cannot be measured.</param>
public sealed record ImageRow(string Label, string Variant, string Scheduler, int Steps, double GuidanceScale, string Decoder,
    int UNetBatch, int UNetCalls, int ShallowUNetCalls, double ImageS, double EncodeS, double DenoiseS, double DecodeS, long PeakRssBytes,
    string? MemoryBudget = null, int? DecodeTileSize = null, long? GenerationPeakBytes = null, long? ExpectedPeakBytes = null, QualityFigures? Quality = null)
{
    public static ImageRow From(ImageRecipe recipe, ProbeResult r)
    {
        var image = r.ImagePart;
        return new(recipe.Label, recipe.Variant, recipe.Scheduler, recipe.Steps, recipe.GuidanceScale, recipe.Decoder, image.UNetBatch,
            image.UNetCalls, image.ShallowUNetCalls, image.ImageS, image.EncodeS, image.DenoiseS, image.DecodeS, r.PeakRssBytes, recipe.MemoryBudget,
            image.DecodeTileSize, image.GenerationPeakBytes, image.ExpectedPeakBytes);
    }
}

/// <summary>
/// A multi-step recipe at one DeepCache interval (1 = its plain time-to-image row): the whole image against interval 1 of the same run;
/// its quality (in <see cref="ImageRow.Quality"/>) is the same recipe and interval on tiny-shapes against FP32 without DeepCache.
/// </summary>
public sealed record DeepCacheRow(ImageRow Image, int Interval, double SpeedupVsInterval1);

/// <summary>One setting tried on one model: its figure, its ratio to the group's baseline (&gt; 1 = faster) and its peak RSS.</summary>
public sealed record Finding(string Group, string Measure, string Setting, double Seconds, double SpeedupVsBaseline, long PeakRssBytes, double CreateS, string Note);

/// <summary>A target of the benchmark issue and what this run achieved.</summary>
public sealed record Target(string Name, string Goal, string Achieved, bool Met);

/// <summary>The machine the figures come from.</summary>
public sealed record MachineInfo(string Cpu, int LogicalCores, int PhysicalCores, string CpuFeatures, long MemoryBytes, string Os, string Runtime, string OrtVersion)
{
    public static MachineInfo Current => new(CpuInfo.Model, Environment.ProcessorCount, CpuInfo.PhysicalCores, CpuInfo.FeatureSummary,
        GC.GetGCMemoryInfo().TotalAvailableMemoryBytes, RuntimeInformation.OSDescription, RuntimeInformation.FrameworkDescription, OnnxSessionFactory.OrtVersion);
}

/// <summary>BENCHMARKS.md and BENCHMARKS.json: the same figures, for people and for tools.</summary>
public sealed record BenchReport
{
    public required DateTimeOffset CreatedAt { get; init; }
    public required string Command { get; init; }
    public required double DurationS { get; init; }
    public required MachineInfo Machine { get; init; }
    public required string Model { get; init; }
    public required int Repeats { get; init; }
    public required IReadOnlyDictionary<string, VariantResult> Variants { get; init; }
    public required IReadOnlyList<Target> Targets { get; init; }
    public required IReadOnlyList<Finding> Findings { get; init; }

    /// <summary>ORT's profile of one UNet step per variant: seconds per operator type, largest first.</summary>
    public required IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> UnetProfiles { get; init; }

    /// <summary>Whole images by recipe, (a) to (d) (empty without the production variant).</summary>
    public required IReadOnlyList<ImageRow> TimeToImage { get; init; }

    /// <summary>The multi-step recipes at each DeepCache interval (empty when not run).</summary>
    public required IReadOnlyList<DeepCacheRow> DeepCache { get; init; }

    /// <summary>The trained bundle the quality columns come from (null: no quality measured).</summary>
    public string? QualityBundle { get; init; }

    public static readonly JsonSerializerOptions Json = new()
    {
        PropertyNamingPolicy = JsonNamingPolicy.SnakeCaseLower, WriteIndented = true,
        DefaultIgnoreCondition = JsonIgnoreCondition.WhenWritingNull, NumberHandling = JsonNumberHandling.AllowNamedFloatingPointLiterals,
    };

    public static BenchReport Create(BenchOptions options, IReadOnlyDictionary<string, VariantResult> variants, IReadOnlyList<Finding> findings,
        IReadOnlyDictionary<string, IReadOnlyDictionary<string, double>> profiles, IReadOnlyList<ImageRow> images, IReadOnlyList<DeepCacheRow> deepCache, bool sd15, TimeSpan duration) => new()
    {
        CreatedAt = DateTimeOffset.UtcNow, Command = options.Command, DurationS = duration.TotalSeconds, Machine = MachineInfo.Current,
        Model = sd15 ? "SD 1.5 graphs (fixtures/sd15-graphs) with random weights, 512×512, batch 2 (guidance), 77 tokens" : $"{options.Fp32Bundle} at its native size, batch 2",
        Repeats = options.Repeats, Variants = variants, Findings = findings, UnetProfiles = profiles, TimeToImage = images, DeepCache = deepCache,
        Targets = TargetsOf(variants, images, deepCache),
    };

    /// <summary>Every target of the benchmark issues, judged on these rows.</summary>
    public static IReadOnlyList<Target> TargetsOf(IReadOnlyDictionary<string, VariantResult> variants, IReadOnlyList<ImageRow> images, IReadOnlyList<DeepCacheRow> deepCache) =>
        [.. JudgeTargets(variants), .. JudgeImageTargets(images), .. JudgeDeepCacheTargets(deepCache)];

    /// <summary>The few-step targets ((d) within 5 s and 1.5 GB, how many times faster than the seed's recipe) and the budget rows' memory.</summary>
    private static List<Target> JudgeImageTargets(IReadOnlyList<ImageRow> images)
    {
        ImageRow? Row(string label) => images.FirstOrDefault(i => i.Label.StartsWith(label, StringComparison.Ordinal));
        var targets = new List<Target>();
        if (Row("(d)") is { } d)
        {
            targets.Add(new("time to a 512² image, (d) LCM 4 steps + TAESD", "≤ 5 s", $"{d.ImageS:F2} s", d.ImageS <= 5));
            targets.Add(new("peak RSS, (d)", "≤ 1.5 GB", $"{d.PeakRssBytes / 1e9:F2} GB", d.PeakRssBytes <= 1.5e9));
            if (Row("(a)") is { } a)
                targets.Add(new Target("(a) / (d): the seed's recipe against the fast path", "report", $"{a.ImageS / d.ImageS:F1}×", true));
        }
        // The memory targets: the full VAE in 2.5 GB, the few-step TAESD path in 1.5 GB, each as the process peaked (load included).
        foreach (var (label, goal) in new[] { ("(e)", 2.5e9), ("(f)", 1.5e9) })
            if (Row(label) is { } row)
                targets.Add(new Target($"peak RSS, {row.Label}", $"≤ {goal / 1e9:0.#} GB", $"{row.PeakRssBytes / 1e9:F2} GB", row.PeakRssBytes <= goal));
        return targets;
    }

    /// <summary>DeepCache's targets: the 20-step DPM++ image within 25 s and the seed's 50-step recipe within 60 s, at the fastest interval measured.</summary>
    private static List<Target> JudgeDeepCacheTargets(IReadOnlyList<DeepCacheRow> rows)
    {
        var targets = new List<Target>();
        foreach (var (scheduler, steps, goal) in new[] { ("dpmpp-2m", 20, 25.0), ("pndm", 50, 60.0) })
        {
            var fastest = rows.Where(r => r.Interval > 1 && r.Image.Scheduler == scheduler && r.Image.Steps == steps).MinBy(r => r.Image.ImageS);
            if (fastest is null) continue;
            targets.Add(new Target($"{steps} {scheduler} steps with DeepCache (fastest interval)", $"≤ {goal:0} s",
                $"{fastest.Image.ImageS:F1} s at interval {fastest.Interval} ({fastest.SpeedupVsInterval1:F2}×{(fastest.Image.Quality is { } q ? $", judge {q.Candidate.Share:P0} vs FP32 {q.Fp32.Share:P0}" : "")})", fastest.Image.ImageS <= goal));
        }
        return targets;
    }

    /// <summary>The issue's targets, judged on the production variant against FP32 from the same run.</summary>
    private static List<Target> JudgeTargets(IReadOnlyDictionary<string, VariantResult> variants)
    {
        var targets = new List<Target>();
        if (!variants.TryGetValue(BenchVariant.Production, out var p)) return targets;
        if (p.SpeedupVsFp32 is { } speedup)
            targets.Add(new Target("UNet step vs FP32 (same run)", "≥ 3× (aim 4×)", $"{speedup:F2}×", speedup >= 3));
        targets.Add(new Target("UNet on disk", "≤ 0.9 GB", $"{p.UnetBytes / 1e9:F3} GB", p.UnetBytes <= 0.9e9));
        targets.Add(new Target("peak RSS, whole generation", "≤ 1.5 GB", $"{p.PeakRssBytes / 1e9:F2} GB", p.PeakRssBytes <= 1.5e9));
        targets.Add(new Target("warm cold start (3 sessions, cached graphs)", "≤ 10 s", $"{p.LoadWarmS:F1} s", p.LoadWarmS <= 10));
        targets.Add(new Target("first step after load (with the warm-up)", "≤ 1.5× steady", $"{p.FirstStepS / p.UnetStepS:F2}×", p.FirstStepS <= 1.5 * p.UnetStepS));
        targets.Add(new Target("pipeline overhead per step", "< 2 % of a step", $"{p.OverheadFraction:P2}", p.OverheadFraction < 0.02));
        if (p.Quality is { } q)
            targets.Add(new Target("judge accuracy on tiny-shapes vs FP32", "within 5 points", $"{q.Candidate.Share:P0} vs {q.Fp32.Share:P0} ({q.PointsLost:0.#} points lost, {q.Pairs} pairs)", q.PointsLost <= 5));
        return targets;
    }

    /// <summary>The chart beside the report: BENCHMARKS.md → BENCHMARKS.svg.</summary>
    public static string ChartPath(string markdownPath) => Path.ChangeExtension(markdownPath, ".svg");

    /// <summary>Writes the report, its chart beside it and, unless null, the figures as JSON.</summary>
    public async Task WriteAsync(string markdownPath, string? jsonPath, CancellationToken ct)
    {
        if (jsonPath is not null) await File.WriteAllTextAsync(jsonPath, JsonSerializer.Serialize(this, Json) + "\n", ct);
        string chart = ChartPath(markdownPath);
        await File.WriteAllTextAsync(chart, BenchChart.Render(this), ct);
        await File.WriteAllTextAsync(markdownPath, ToMarkdown(Path.GetFileName(chart)), ct);
    }

    /// <summary>A report saved as JSON by an earlier run (to draw its report and chart again without measuring).</summary>
    public static async Task<BenchReport> ReadAsync(string jsonPath, CancellationToken ct)
    {
        await using var file = File.OpenRead(jsonPath);
        try
        {
            return await JsonSerializer.DeserializeAsync<BenchReport>(file, Json, ct) ?? throw new JsonException("null");
        }
        catch (JsonException e) { throw new InvalidDataException($"{jsonPath} is not a report sdf bench wrote ({e.Message})", e); }
    }

    /// <param name="chartFile">The chart's file name beside the report, shown at its top (none when null).</param>
    public string ToMarkdown(string? chartFile = null)
    {
        var md = new StringBuilder();
        string S(double? v) => v is { } x && double.IsFinite(x) ? x.ToString(x < 10 ? "F2" : "F1", CultureInfo.InvariantCulture) : "–";
        string Gb(long v) => (v / 1e9).ToString("F2", CultureInfo.InvariantCulture);
        string X(double? v) => v is { } x && double.IsFinite(x) ? x.ToString("F2", CultureInfo.InvariantCulture) + "×" : "–";
        // Quality columns: judge accuracy (FP32's beside it), PSNR and SSIM against FP32, on tiny-shapes.
        string Q(QualityFigures? q) => q is null ? "– | – | –"
            : $"{q.Candidate.Share.ToString("P0", CultureInfo.InvariantCulture)} ({q.Fp32.Share.ToString("P0", CultureInfo.InvariantCulture)}) | {(double.IsPositiveInfinity(q.PsnrMedian) ? "∞" : q.PsnrMedian.ToString("F1", CultureInfo.InvariantCulture))} | {q.SsimMean.ToString("F3", CultureInfo.InvariantCulture)}";
        const string QualityHeader = " judge (FP32) | PSNR dB | SSIM |", QualityRule = "---|---|---|";

        md.AppendLine("# Benchmarks").AppendLine();
        md.AppendLine($"Written by `{Command}` on {CreatedAt:yyyy-MM-dd HH:mm} UTC in {DurationS / 60:F0} min. Every figure below comes from that one run;");
        md.AppendLine("ratios compare figures of the same run. Medians over the timed runs after warm-up; this machine is noisy, so read ratios, not digits.").AppendLine();
        md.AppendLine($"- Machine: {Machine.Cpu}, {Machine.LogicalCores} logical / {Machine.PhysicalCores} physical cores, {Machine.CpuFeatures}, {Machine.MemoryBytes / (double)(1L << 30):F0} GiB; {Machine.Os}");
        md.AppendLine($"- Runtime: ONNX Runtime {Machine.OrtVersion} (CPU execution provider, C#), {Machine.Runtime}");
        md.AppendLine($"- Model: {Model}; {Repeats} timed repeats for the text encoder and the VAE");
        if (chartFile is not null) md.AppendLine().AppendLine($"![Time to a 512² image per recipe and UNet step per variant, from this run]({chartFile})");
        md.AppendLine().AppendLine("## Variants").AppendLine();
        md.AppendLine($"| variant | UNet step s | vs FP32 | first step s | text encoder s | VAE decode s | load cold s | load warm s | + warm-up s | peak RSS GB | UNet on disk GB | 3 models on disk GB | 20 steps DPM++ s | 50 steps PNDM s | pipeline overhead |{QualityHeader}");
        md.AppendLine($"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{QualityRule}");
        foreach (var (name, v) in Variants)
            md.AppendLine($"| `{name}` | {S(v.UnetStepS)} | {X(v.SpeedupVsFp32)} | {S(v.FirstStepS)} | {S(v.TextEncoderS)} | {S(v.VaeDecodeS)} | {S(v.LoadColdS)} | {S(v.LoadWarmS)}{(v.LoadWarmFromCache ? "" : " (not cached)")} | {S(v.WarmUpS)} | {Gb(v.PeakRssBytes)} | {Gb(v.UnetBytes)} | {Gb(v.ModelBytes)} | {S(v.E2e20DpmppS)} | {S(v.E2e50PndmS)} | {v.OverheadFraction.ToString("P2", CultureInfo.InvariantCulture)} | {Q(v.Quality)} |");
        md.AppendLine();
        foreach (var (name, v) in Variants) md.AppendLine($"- `{name}`: {v.Description}");
        if (Model.StartsWith("SD 1.5", StringComparison.Ordinal) && Variants.Count > 0)
        {
            md.AppendLine().Append($"Against PyTorch 1.13 FP32 on this machine ({BenchRunner.PyTorchFp32StepSeconds} s per step, measured by the fixtures' README, not in this run): ");
            md.AppendLine(string.Join(", ", Variants.Select(v => $"`{v.Key}` {BenchRunner.PyTorchFp32StepSeconds / v.Value.UnetStepS:F1}×")) + ".");
        }
        md.AppendLine().AppendLine("How each figure is measured (each variant in fresh processes):").AppendLine();
        md.AppendLine("- UNet step: median of the UNet's `Run` over a 20-step DPM++ 2M generation (batch 2, guidance 7.5); first step: the first UNet `Run` of the first generation after the service's load (sessions + one warm-up run of each model).");
        md.AppendLine("- Text encoder: one prompt (77 tokens); VAE decode: latents → RGB bytes at full size.");
        md.AppendLine("- Load cold: the three sessions with an empty optimized-graph cache (ORT optimizes and saves); load warm: a new process creating them from that cache; + warm-up: the one run of each model the service does next, so that no user meets the slow first runs.");
        md.AppendLine("- Peak RSS: the process's peak (VmHWM) over load + first generation + text encoder and VAE repeats + the 20-step generation.");
        md.AppendLine("- Pipeline overhead: step time minus the UNet's `Run` (scheduler, guidance, copies), as a share of the step.");
        if (QualityBundle is not null)
            md.AppendLine($"- Quality (every table): random weights draw nothing, so each row's optimizer recipe is applied to the trained `{QualityBundle}` model (calibrated as `sdf optimize` ships it) and run with the row's scheduler, steps, decoder and DeepCache interval at guidance {BenchQuality.Guidance} (the row's 7.5 breaks that model's multistep solvers, FP32 included); variant rows with 20 DPM++ steps. Judge: share of caption × seed pairs the shapes judge reads right, FP32's in brackets; PSNR (median) and SSIM (mean) against FP32 tiny-shapes, same recipe without DeepCache. `sdf evaluate` gives the per-image figures ([docs/quality.md](docs/quality.md)). Few-step rows: the same on tiny-shapes-lcm (tiny-shapes distilled into an LCM) with the trained tiny decoder, at LCM's 4 steps; – where it was not there.");

        if (TimeToImage.Count > 0)
        {
            md.AppendLine().AppendLine("## Time to a 512² image on this machine").AppendLine();
            md.AppendLine("Each row: whole generations (encode + steps + decode) in a fresh process after the service's load and warm-up, median of its runs; peak RSS of that process. The batch-1 variant is the same SD 1.5 graph (an LCM-LoRA-fused UNet has this graph; an LCM-distilled one adds one small linear layer).").AppendLine();
            md.AppendLine("Peak RSS: the process's, load included; generation peak: the largest a job records (the peak restarted when it begins). The budget rows run the service's `Model:MemoryBudget`: the pipeline measures its models at load and decodes the full VAE in tiles when a whole decode would not fit (tile column), and the text encoder and decoders hand their memory back after each run; planned: the peak the plan expected.").AppendLine();
            md.AppendLine($"| recipe | variant | scheduler | steps | guidance | decoder | budget | VAE tile px | UNet batch × calls | image s | encode s | denoise s | decode s | peak RSS GB | generation peak GB | planned GB | vs (a) |{QualityHeader}");
            md.AppendLine($"|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|{QualityRule}");
            double a = TimeToImage[0].ImageS;
            foreach (var i in TimeToImage)
                md.AppendLine($"| {i.Label} | `{i.Variant}` | {i.Scheduler} | {i.Steps} | {i.GuidanceScale:0.#} | {i.Decoder} | {i.MemoryBudget ?? "–"} | {(i.DecodeTileSize is { } t ? t.ToString(CultureInfo.InvariantCulture) : "–")} | {i.UNetBatch} × {i.UNetCalls} | {S(i.ImageS)} | {S(i.EncodeS)} | {S(i.DenoiseS)} | {S(i.DecodeS)} | {Gb(i.PeakRssBytes)} | {(i.GenerationPeakBytes is { } g ? Gb(g) : "–")} | {(i.ExpectedPeakBytes is { } e ? Gb(e) : "–")} | {X(a / i.ImageS)} | {Q(i.Quality)} |");
        }
        if (DeepCache.Count > 0)
        {
            md.AppendLine().AppendLine("## DeepCache: the multi-step recipes with cached deep features").AppendLine();
            md.AppendLine($"Each row a fresh process as above, the same variant (its full graph also outputs the cached feature). Every `interval`-th step runs the whole UNet, the steps between only the shallow branch (uniform schedule, branch 0). Speed-up against interval 1 of the same run; quality: the same recipe and interval on tiny-shapes, against FP32 without DeepCache.").AppendLine();
            md.AppendLine($"| recipe | interval | UNet calls (shallow) | image s | denoise s | decode s | speed-up vs interval 1 | peak RSS GB |{QualityHeader}");
            md.AppendLine($"|---|---|---|---|---|---|---|---|{QualityRule}");
            foreach (var r in DeepCache)
                md.AppendLine($"| {r.Image.Label} | {r.Interval} | {r.Image.UNetCalls} ({r.Image.ShallowUNetCalls}) | {S(r.Image.ImageS)} | {S(r.Image.DenoiseS)} | {S(r.Image.DecodeS)} | {X(r.SpeedupVsInterval1)} | {Gb(r.Image.PeakRssBytes)} | {Q(r.Image.Quality)} |");
        }
        if (Targets.Count > 0)
        {
            md.AppendLine().AppendLine($"## Targets (`{BenchVariant.Production}`; few-step rows: `{BenchVariant.FewStep.Name}`)").AppendLine();
            md.AppendLine("| target | goal | achieved | met |").AppendLine("|---|---|---|---|");
            foreach (var t in Targets) md.AppendLine($"| {t.Name} | {t.Goal} | {t.Achieved} | {(t.Met ? "yes" : "**no**")} |");
        }
        if (Findings.Count > 0)
        {
            md.AppendLine().AppendLine("## What else buys speed").AppendLine();
            md.AppendLine("Baselines: the UNet rows compare with its default settings (first row), the VAE rows with the FP32 decoder, whole.").AppendLine();
            md.AppendLine("| group | measure | setting | seconds | speed-up vs baseline | peak RSS GB | session create s | note |").AppendLine("|---|---|---|---|---|---|---|---|");
            foreach (var f in Findings)
                md.AppendLine($"| {f.Group} | {f.Measure} | {f.Setting} | {S(f.Seconds)} | {X(f.SpeedupVsBaseline)} | {Gb(f.PeakRssBytes)} | {S(f.CreateS)} | {f.Note} |");
        }
        if (UnetProfiles.Count > 0)
        {
            md.AppendLine().AppendLine("## Where a UNet step goes").AppendLine();
            md.AppendLine("ONNX Runtime's profile (kernel time per operator type, per step, timed runs only); the sum is below the step time by ORT's own scheduling.").AppendLine();
            var names = UnetProfiles.Keys.ToList();
            md.AppendLine($"| operator | {string.Join(" | ", names.Select(n => $"`{n}` ms | share"))} |").AppendLine($"|---|{string.Concat(names.Select(_ => "---|---|"))}");
            var ops = UnetProfiles.SelectMany(p => p.Value.Keys).Distinct()
                .OrderByDescending(op => UnetProfiles.Values.Max(p => p.GetValueOrDefault(op))).Take(15).ToList();
            foreach (string op in ops)
                md.AppendLine($"| {op} | {string.Join(" | ", names.Select(n => UnetProfiles[n].TryGetValue(op, out double v) ? $"{v * 1000:F0} | {v / UnetProfiles[n].Values.Sum():P1}" : "– | –"))} |");
            md.AppendLine($"| **sum** | {string.Join(" | ", names.Select(n => $"{UnetProfiles[n].Values.Sum() * 1000:F0} | 100 %"))} |");
        }
        return md.ToString();
    }
}
