using System.Diagnostics;
using System.Text.Json;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Cli.Bench;

/// <summary>What one probe process measures.</summary>
public enum ProbeKind
{
    /// <summary>Load the whole pipeline (no warm-up) and stop: with an empty cache this is the cold start.</summary>
    Load,

    /// <summary>Load with the warm-up runs, then text encoder, VAE decode and whole generations, as the service runs them.</summary>
    Pipeline,

    /// <summary>The UNet alone at the production shape (for the settings findings).</summary>
    UNet,

    /// <summary>The VAE decoder alone, at full size or in tiles.</summary>
    Vae,

    /// <summary>Load as the service does (with the request's decoder as the one loaded), warm up, then whole images of one recipe.</summary>
    Image,
}

/// <summary>One measurement, run in a process of its own so that its peak RSS and its cold start are its own.</summary>
public sealed record ProbeRequest
{
    public required ProbeKind Kind { get; init; }
    public required string Bundle { get; init; }
    public string? Cache { get; init; }
    public int? Threads { get; init; }
    public GraphOptimizationLevel OptimizationLevel { get; init; } = GraphOptimizationLevel.ORT_ENABLE_ALL;
    public bool CpuMemArena { get; init; } = true;
    public bool MemoryPattern { get; init; }

    /// <summary>Timed runs after the warm-up runs (medians are over these).</summary>
    public int Repeats { get; init; } = 3;
    public int WarmUpRuns { get; init; } = 2;

    /// <summary>Pipeline: also a 20-step DPM++ 2M generation / a 50-step PNDM generation.</summary>
    public bool E2e20 { get; init; } = true;
    public bool E2e50 { get; init; }

    /// <summary>VAE: latent tile size (null = the whole latent) and how many tiles make one image.</summary>
    public int? VaeTileLatent { get; init; }
    public int VaeTiles { get; init; } = 1;

    /// <summary>UNet: also record ORT's per-node profile and report the time per operator type.</summary>
    public bool Profile { get; init; }

    /// <summary>Image: the recipe (the decoder is also the only one the pipeline loads).</summary>
    public string Scheduler { get; init; } = "pndm";
    public int Steps { get; init; } = 50;
    public double GuidanceScale { get; init; } = 7.5;
    public string Decoder { get; init; } = "full";

    /// <summary>Image: DeepCache's interval (1 = every step runs the whole UNet).</summary>
    public int CacheInterval { get; init; } = 1;

    /// <summary>Image: the pipeline's memory budget in bytes (null: none).</summary>
    public long? MemoryBudget { get; init; }

    [System.Text.Json.Serialization.JsonIgnore]
    public SessionSettings Session => new()
    {
        IntraOpThreads = Threads, GraphOptimizationLevel = OptimizationLevel, EnableCpuMemArena = CpuMemArena,
        EnableMemoryPattern = MemoryPattern, OptimizedModelCacheDirectory = Cache,
    };
}

/// <summary>Runs one <see cref="ProbeRequest"/> in this process.</summary>
public static class BenchProbe
{
    public const string Prompt = "a photo of an astronaut riding a horse on mars";

    // Each generation restarts the process's peak (to record its own): the probe's peak is the largest seen before each of them,
    // by each of them, and at the end.
    private static long _peakSeen;

    private static async Task<GenerationResult> GenerateAsync(StableDiffusionPipeline pipeline, GenerationRequest request, CancellationToken ct)
    {
        _peakSeen = Math.Max(_peakSeen, ProcessMemory.Peak);
        var result = await pipeline.GenerateAsync(request, null, ct);
        _peakSeen = Math.Max(_peakSeen, result.PeakMemoryBytes ?? 0);
        return result;
    }

    public static async Task<ProbeResult> RunAsync(ProbeRequest request, IProgress<string> progress, CancellationToken ct)
    {
        var measured = request.Kind switch
        {
            ProbeKind.Load => await RunLoadAsync(request, ct),
            ProbeKind.Pipeline => await RunPipelineAsync(request, progress, ct),
            ProbeKind.UNet => RunUNet(request, ct),
            ProbeKind.Vae => RunVae(request, ct),
            ProbeKind.Image => await RunImageAsync(request, progress, ct),
            _ => throw new ArgumentOutOfRangeException(nameof(request), request.Kind, "Unknown probe kind."),
        };
        // Each kind fills its own parts; the process's memory is read here, after all of its work.
        return measured with
        {
            PeakRssBytes = Math.Max(_peakSeen, ProcessMemory.Peak),
            Resident = new ResidentMemory(ProcessMemory.StatusBytes("RssAnon:"), ProcessMemory.StatusBytes("RssFile:")),
        };
    }

    private static LoadFigures LoadOf(StableDiffusionPipeline pipeline) => new(pipeline.LoadTime.TotalSeconds,
        pipeline.Sessions.Sum(s => s.Duration.TotalSeconds), pipeline.Sessions.Count, pipeline.Sessions.Count(s => s.FromCache),
        pipeline.Sessions.ToDictionary(s => s.Component, s => s.Duration.TotalSeconds));

    private static async Task<ProbeResult> RunLoadAsync(ProbeRequest request, CancellationToken ct)
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle, new PipelineOptions { WarmUp = false, Session = request.Session }, cancellationToken: ct);
        return new ProbeResult(0, Load: LoadOf(pipeline));
    }

    private static async Task<ProbeResult> RunPipelineAsync(ProbeRequest request, IProgress<string> progress, CancellationToken ct)
    {
        // As the service loads: sessions, then one warm-up run of each model (the first runs after load are the slow ones).
        using var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle, new PipelineOptions { WarmUp = true, Session = request.Session }, cancellationToken: ct);
        var load = LoadOf(pipeline);
        progress.Report($"loaded in {load.LoadS:F1} s (sessions {load.SessionsS:F1} s); first steps");

        // The first generation after load: its first UNet call against the steady ones.
        var first = await GenerateAsync(pipeline, new GenerationRequest { Prompt = Prompt, Steps = Math.Max(request.WarmUpRuns, 1), Seed = 1, Scheduler = "dpmpp-2m" }, ct);

        var encoder = new List<double>();
        for (int i = 0; i < request.Repeats + 1; i++)
        {
            var watch = Stopwatch.StartNew();
            await pipeline.EncodePromptAsync(Prompt + $" {i}", ct); // a new prompt each time: nothing is cached
            if (i > 0) encoder.Add(watch.Elapsed.TotalSeconds);
        }

        var decode = new List<double>();
        for (int i = 0; i < request.Repeats; i++)
        {
            var watch = Stopwatch.StartNew();
            await pipeline.DecodeLatentsAsync(first.Latents, cancellationToken: ct); // the first decode happened in the first generation
            decode.Add(watch.Elapsed.TotalSeconds);
        }
        progress.Report($"text encoder {Median(encoder):F2} s, VAE decode {Median(decode):F2} s");

        GenerationResult? e2e20 = request.E2e20 ? await GenerateAsync(pipeline, "dpmpp-2m", 20, progress, ct) : null;
        GenerationResult? e2e50 = request.E2e50 ? await GenerateAsync(pipeline, "pndm", 50, progress, ct) : null;
        var stepsFrom = e2e20 ?? e2e50 ?? await GenerateAsync(pipeline, "dpmpp-2m", request.Repeats, progress, ct);
        var figures = new PipelineFigures(load.LoadS - load.SessionsS, first.Timings.UNetRuns[0].TotalSeconds, Median(encoder), Median(decode),
            StepsOf(stepsFrom.Timings), e2e20?.Timings.Total.TotalSeconds, e2e50?.Timings.Total.TotalSeconds);
        return new ProbeResult(0, Load: load, Pipeline: figures);
    }

    private static async Task<ProbeResult> RunImageAsync(ProbeRequest request, IProgress<string> progress, CancellationToken ct)
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle,
            new PipelineOptions { WarmUp = true, DefaultDecoder = request.Decoder, Session = request.Session, MemoryBudget = request.MemoryBudget }, cancellationToken: ct);
        var recipe = new GenerationRequest
        {
            Prompt = Prompt, Scheduler = request.Scheduler, Steps = request.Steps, GuidanceScale = request.GuidanceScale, Decoder = request.Decoder,
            CacheInterval = request.CacheInterval,
        };
        await GenerateAsync(pipeline, recipe with { Steps = 1, Seed = 1 }, ct); // the first generation's own first-run costs stay out
        var runs = new List<GenerationResult>();
        for (int i = 0; i < request.Repeats; i++)
        {
            runs.Add(await GenerateAsync(pipeline, recipe with { Seed = 42 + i }, ct));
            progress.Report($"{request.Steps} steps {request.Scheduler}, {request.Decoder} decoder: {runs[^1].Timings.Total.TotalSeconds:F2} s");
        }
        var image = new ImageFigures(Median(runs.Select(r => r.Timings.Total.TotalSeconds)), Median(runs.Select(r => r.Timings.Encode.TotalSeconds)),
            Median(runs.Select(r => r.Timings.Denoise.TotalSeconds)), Median(runs.Select(r => r.Timings.Decode.TotalSeconds)),
            runs[0].UNetCalls, runs[0].UNetBatch, runs[0].ShallowUNetCalls, runs[0].DecodeTileSize,
            runs.All(r => r.PeakMemoryBytes is not null) ? runs.Max(r => r.PeakMemoryBytes!.Value) : null, pipeline.Memory.ExpectedPeakBytes);
        return new ProbeResult(0, Load: LoadOf(pipeline), Image: image);
    }

    private static StepFigures StepsOf(GenerationTimings timings) => new(
        Median(timings.UNetRuns.Select(t => t.TotalSeconds)),
        Median(timings.Steps.Select(t => t.TotalSeconds)),
        (timings.Denoise - timings.UNetRuns.Aggregate(TimeSpan.Zero, (a, b) => a + b)).TotalSeconds / timings.Steps.Count,
        timings.Overhead.TotalSeconds);

    private static async Task<GenerationResult> GenerateAsync(StableDiffusionPipeline pipeline, string scheduler, int steps, IProgress<string> progress, CancellationToken ct)
    {
        progress.Report($"generating: {steps} steps {scheduler}");
        var result = await GenerateAsync(pipeline, new GenerationRequest { Prompt = Prompt, Steps = steps, Seed = 42, Scheduler = scheduler }, ct);
        progress.Report($"{steps} steps {scheduler}: {result.Timings.Total.TotalSeconds:F1} s");
        return result;
    }

    private static ProbeResult RunUNet(ProbeRequest request, CancellationToken ct)
    {
        var bundle = ModelBundle.Open(request.Bundle);
        string? profile = request.Profile ? Path.Combine(Path.GetTempPath(), $"sdf-unet-profile-{Guid.NewGuid():N}") : null;
        var factory = new OnnxSessionFactory(request.Session with { ProfilingPrefix = profile }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        int hidden = (int)(bundle.Unet.FindInput("encoder_hidden_states")!.Dims[2].Value ?? 768);
        int latentH = bundle.DefaultHeight / bundle.VaeScaleFactor, latentW = bundle.DefaultWidth / bundle.VaeScaleFactor;
        var watch = Stopwatch.StartNew();
        ModelRunFigures figures;
        using (var unet = new UNetModel(factory, bundle, 2, latentH, latentW, bundle.Tokenizer.MaxLength, hidden))
        {
            double create = watch.Elapsed.TotalSeconds;
            FillNormal(unet.Sample, 1f, 1);
            FillNormal(unet.EncoderHiddenStates, 0.5f, 2);
            using var runOptions = new RunOptions();
            var (firstRun, run) = TimeRuns(() => unet.Run(981, runOptions), request, ct);
            figures = new ModelRunFigures(create, firstRun, run, run);
        } // disposing the session writes the profile
        if (profile is not null) figures = WithProfile(figures, profile, request);
        return new ProbeResult(0, ModelRun: figures);
    }

    /// <summary>
    /// Sums ORT's per-node kernel times by operator type over the timed runs (the warm-up runs left out): seconds per step
    /// by operator type, and the largest single node output in bytes.
    /// </summary>
    private static ModelRunFigures WithProfile(ModelRunFigures figures, string prefix, ProbeRequest request)
    {
        // One file per session: a DeepCache bundle's UNet has two, and only the full graph runs here.
        string file = Directory.GetFiles(Path.GetDirectoryName(prefix)!, Path.GetFileName(prefix) + "*.json").MaxBy(f => new FileInfo(f).Length)!;
        long largest = 0;
        var byOp = new Dictionary<string, double>();
        using (var doc = JsonDocument.Parse(File.ReadAllText(file)))
        {
            var events = doc.RootElement.EnumerateArray().ToList();
            var runs = events.Where(e => e.GetProperty("name").GetString() == "model_run").Select(e => e.GetProperty("ts").GetInt64()).Order().ToList();
            long start = runs.Count > request.WarmUpRuns ? runs[request.WarmUpRuns] : 0;
            foreach (var e in events)
            {
                if (e.GetProperty("cat").GetString() != "Node" || !e.TryGetProperty("args", out var args) || !args.TryGetProperty("op_name", out var op)) continue;
                if (args.TryGetProperty("output_size", out var size) && long.TryParse(size.GetString(), out long bytes)) largest = Math.Max(largest, bytes);
                if (e.GetProperty("ts").GetInt64() < start || !e.GetProperty("name").GetString()!.EndsWith("_kernel_time", StringComparison.Ordinal)) continue;
                byOp[op.GetString()!] = byOp.GetValueOrDefault(op.GetString()!) + e.GetProperty("dur").GetInt64() / 1e6 / request.Repeats;
            }
        }
        foreach (string written in Directory.GetFiles(Path.GetDirectoryName(prefix)!, Path.GetFileName(prefix) + "*.json")) File.Delete(written);
        return figures with { SecondsByOperator = byOp, LargestNodeOutputBytes = largest };
    }

    private static ProbeResult RunVae(ProbeRequest request, CancellationToken ct)
    {
        var bundle = ModelBundle.Open(request.Bundle);
        var factory = new OnnxSessionFactory(request.Session, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        int latent = request.VaeTileLatent ?? bundle.DefaultHeight / bundle.VaeScaleFactor;
        var watch = Stopwatch.StartNew();
        using var vae = new VaeDecoderModel(factory, bundle, latent, latent);
        double create = watch.Elapsed.TotalSeconds;
        FillNormal(vae.Latents, 1f / bundle.VaeScalingFactor, 3);
        using var runOptions = new RunOptions();
        var (firstRun, run) = TimeRuns(() => vae.Run(runOptions), request, ct);
        return new ProbeResult(0, ModelRun: new ModelRunFigures(create, firstRun, run, run * request.VaeTiles));
    }

    /// <summary>Warm-up runs, then the timed runs: the first run and the median of the timed ones.</summary>
    private static (double FirstRunS, double MedianS) TimeRuns(Action run, ProbeRequest request, CancellationToken ct)
    {
        var times = new List<double>();
        double first = 0;
        for (int i = 0; i < request.WarmUpRuns + request.Repeats; i++)
        {
            ct.ThrowIfCancellationRequested();
            var watch = Stopwatch.StartNew();
            run();
            if (i == 0) first = watch.Elapsed.TotalSeconds;
            if (i >= request.WarmUpRuns) times.Add(watch.Elapsed.TotalSeconds);
        }
        return (first, Median(times));
    }

    private static void FillNormal(float[] values, float scale, long seed)
    {
        new SeededGaussianNoise(seed).Fill(values);
        for (int i = 0; i < values.Length; i++) values[i] *= scale;
    }

    public static double Median(IEnumerable<double> values)
    {
        var sorted = values.Order().ToArray();
        if (sorted.Length == 0) return double.NaN;
        return sorted.Length % 2 == 1 ? sorted[sorted.Length / 2] : (sorted[sorted.Length / 2 - 1] + sorted[sorted.Length / 2]) / 2;
    }

    public static readonly JsonSerializerOptions Json = new(JsonSerializerDefaults.Web)
    {
        WriteIndented = true, Converters = { new System.Text.Json.Serialization.JsonStringEnumConverter() },
    };
}
