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

/// <summary>A probe's figures (seconds unless the name says otherwise) and the process's peak RSS.</summary>
public sealed record ProbeResult(Dictionary<string, double> Figures, long PeakRssBytes);

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
        var figures = new Dictionary<string, double>();
        switch (request.Kind)
        {
            case ProbeKind.Load:
                using (var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle, new PipelineOptions { WarmUp = false, Session = request.Session }, cancellationToken: ct))
                    AddLoad(figures, pipeline);
                break;
            case ProbeKind.Pipeline:
                await RunPipelineAsync(request, figures, progress, ct);
                break;
            case ProbeKind.UNet:
                RunUNet(request, figures, ct);
                break;
            case ProbeKind.Vae:
                RunVae(request, figures, ct);
                break;
            case ProbeKind.Image:
                await RunImageAsync(request, figures, progress, ct);
                break;
        }
        AddResidentBreakdown(figures);
        return new ProbeResult(figures, Math.Max(_peakSeen, ProcessMemory.Peak));
    }

    /// <summary>Linux: resident memory now, split into anonymous (arenas, copies) and file-backed (memory-mapped weights).</summary>
    private static void AddResidentBreakdown(Dictionary<string, double> figures)
    {
        foreach (var (key, name) in new[] { ("RssAnon:", "rss_anon_bytes"), ("RssFile:", "rss_file_bytes") })
            if (ProcessMemory.StatusBytes(key) is { } bytes) figures[name] = bytes;
    }

    private static void AddLoad(Dictionary<string, double> figures, StableDiffusionPipeline pipeline)
    {
        figures["load_s"] = pipeline.LoadTime.TotalSeconds;
        figures["sessions_s"] = pipeline.Sessions.Sum(s => s.Duration.TotalSeconds);
        figures["sessions"] = pipeline.Sessions.Count;
        figures["sessions_from_cache"] = pipeline.Sessions.Count(s => s.FromCache);
        foreach (var s in pipeline.Sessions) figures[$"load_{s.Component}_s"] = s.Duration.TotalSeconds;
    }

    private static async Task RunPipelineAsync(ProbeRequest request, Dictionary<string, double> figures, IProgress<string> progress, CancellationToken ct)
    {
        // As the service loads: sessions, then one warm-up run of each model (the first runs after load are the slow ones).
        using var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle, new PipelineOptions { WarmUp = true, Session = request.Session }, cancellationToken: ct);
        AddLoad(figures, pipeline);
        figures["warm_up_s"] = figures["load_s"] - figures["sessions_s"];
        progress.Report($"loaded in {pipeline.LoadTime.TotalSeconds:F1} s (sessions {figures["sessions_s"]:F1} s); first steps");

        // The first generation after load: its first UNet call against the steady ones.
        var first = await GenerateAsync(pipeline, new GenerationRequest { Prompt = Prompt, Steps = Math.Max(request.WarmUpRuns, 1), Seed = 1, Scheduler = "dpmpp-2m" }, ct);
        figures["first_step_s"] = first.Timings.UNetRuns[0].TotalSeconds;

        var encoder = new List<double>();
        for (int i = 0; i < request.Repeats + 1; i++)
        {
            var watch = Stopwatch.StartNew();
            await pipeline.EncodePromptAsync(Prompt + $" {i}", ct); // a new prompt each time: nothing is cached
            if (i > 0) encoder.Add(watch.Elapsed.TotalSeconds);
        }
        figures["text_encoder_s"] = Median(encoder);

        var decode = new List<double>();
        for (int i = 0; i < request.Repeats; i++)
        {
            var watch = Stopwatch.StartNew();
            await pipeline.DecodeLatentsAsync(first.Latents, cancellationToken: ct); // the first decode happened in the first generation
            decode.Add(watch.Elapsed.TotalSeconds);
        }
        figures["vae_decode_s"] = Median(decode);
        progress.Report($"text encoder {figures["text_encoder_s"]:F2} s, VAE decode {figures["vae_decode_s"]:F2} s");

        if (request.E2e20)
        {
            var result = await GenerateAsync(pipeline, "dpmpp-2m", 20, progress, ct);
            figures["e2e_20_dpmpp_s"] = result.Timings.Total.TotalSeconds;
            AddSteps(figures, result.Timings);
        }
        if (request.E2e50)
        {
            var result = await GenerateAsync(pipeline, "pndm", 50, progress, ct);
            figures["e2e_50_pndm_s"] = result.Timings.Total.TotalSeconds;
            if (!request.E2e20) AddSteps(figures, result.Timings);
        }
        if (!request.E2e20 && !request.E2e50)
        {
            var result = await GenerateAsync(pipeline, "dpmpp-2m", request.Repeats, progress, ct);
            AddSteps(figures, result.Timings);
        }
    }

    private static async Task RunImageAsync(ProbeRequest request, Dictionary<string, double> figures, IProgress<string> progress, CancellationToken ct)
    {
        using var pipeline = await StableDiffusionPipeline.LoadAsync(request.Bundle,
            new PipelineOptions { WarmUp = true, DefaultDecoder = request.Decoder, Session = request.Session, MemoryBudget = request.MemoryBudget }, cancellationToken: ct);
        AddLoad(figures, pipeline);
        if (pipeline.Memory.ExpectedPeakBytes is { } expected) figures["expected_peak_bytes"] = expected;
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
        figures["image_s"] = Median(runs.Select(r => r.Timings.Total.TotalSeconds));
        figures["encode_s"] = Median(runs.Select(r => r.Timings.Encode.TotalSeconds));
        figures["denoise_s"] = Median(runs.Select(r => r.Timings.Denoise.TotalSeconds));
        figures["decode_s"] = Median(runs.Select(r => r.Timings.Decode.TotalSeconds));
        figures["unet_calls"] = runs[0].UNetCalls;
        figures["unet_batch"] = runs[0].UNetBatch;
        figures["shallow_unet_calls"] = runs[0].ShallowUNetCalls;
        figures["decode_tile_size"] = runs[0].DecodeTileSize ?? 0;
        if (runs.All(r => r.PeakMemoryBytes is not null)) figures["generation_peak_bytes"] = runs.Max(r => r.PeakMemoryBytes!.Value);
    }

    /// <summary>The UNet step (the model's Run), the pipeline step around it, and the pipeline's own share.</summary>
    private static void AddSteps(Dictionary<string, double> figures, GenerationTimings timings)
    {
        figures["unet_step_s"] = Median(timings.UNetRuns.Select(t => t.TotalSeconds));
        figures["step_s"] = Median(timings.Steps.Select(t => t.TotalSeconds));
        figures["overhead_per_step_s"] = (timings.Denoise - timings.UNetRuns.Aggregate(TimeSpan.Zero, (a, b) => a + b)).TotalSeconds / timings.Steps.Count;
        figures["overhead_s"] = timings.Overhead.TotalSeconds;
    }

    private static async Task<GenerationResult> GenerateAsync(StableDiffusionPipeline pipeline, string scheduler, int steps, IProgress<string> progress, CancellationToken ct)
    {
        progress.Report($"generating: {steps} steps {scheduler}");
        var result = await GenerateAsync(pipeline, new GenerationRequest { Prompt = Prompt, Steps = steps, Seed = 42, Scheduler = scheduler }, ct);
        progress.Report($"{steps} steps {scheduler}: {result.Timings.Total.TotalSeconds:F1} s");
        return result;
    }

    private static void RunUNet(ProbeRequest request, Dictionary<string, double> figures, CancellationToken ct)
    {
        var bundle = ModelBundle.Open(request.Bundle);
        string? profile = request.Profile ? Path.Combine(Path.GetTempPath(), $"sdf-unet-profile-{Guid.NewGuid():N}") : null;
        var factory = new OnnxSessionFactory(request.Session with { ProfilingPrefix = profile }, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        int hidden = (int)(bundle.Unet.FindInput("encoder_hidden_states")!.Dims[2].Value ?? 768);
        int latentH = bundle.DefaultHeight / bundle.VaeScaleFactor, latentW = bundle.DefaultWidth / bundle.VaeScaleFactor;
        var watch = Stopwatch.StartNew();
        using (var unet = new UNetModel(factory, bundle, 2, latentH, latentW, bundle.Tokenizer.MaxLength, hidden))
        {
            figures["create_s"] = watch.Elapsed.TotalSeconds;
            FillNormal(unet.Sample, 1f, 1);
            FillNormal(unet.EncoderHiddenStates, 0.5f, 2);
            using var runOptions = new RunOptions();
            figures["unet_step_s"] = TimeRuns(() => unet.Run(981, runOptions), request, figures, ct);
        } // disposing the session writes the profile
        if (profile is not null) AddProfile(profile, request, figures);
    }

    /// <summary>
    /// Sums ORT's per-node kernel times by operator type over the timed runs (the warm-up runs left out):
    /// figures "op:{type}" in seconds per step, and the largest single node output in bytes.
    /// </summary>
    private static void AddProfile(string prefix, ProbeRequest request, Dictionary<string, double> figures)
    {
        // One file per session: a DeepCache bundle's UNet has two, and only the full graph runs here.
        string file = Directory.GetFiles(Path.GetDirectoryName(prefix)!, Path.GetFileName(prefix) + "*.json").MaxBy(f => new FileInfo(f).Length)!;
        using (var doc = JsonDocument.Parse(File.ReadAllText(file)))
        {
            var events = doc.RootElement.EnumerateArray().ToList();
            var runs = events.Where(e => e.GetProperty("name").GetString() == "model_run").Select(e => e.GetProperty("ts").GetInt64()).Order().ToList();
            long start = runs.Count > request.WarmUpRuns ? runs[request.WarmUpRuns] : 0;
            long largest = 0;
            var byOp = new Dictionary<string, double>();
            foreach (var e in events)
            {
                if (e.GetProperty("cat").GetString() != "Node" || !e.TryGetProperty("args", out var args) || !args.TryGetProperty("op_name", out var op)) continue;
                if (args.TryGetProperty("output_size", out var size) && long.TryParse(size.GetString(), out long bytes)) largest = Math.Max(largest, bytes);
                if (e.GetProperty("ts").GetInt64() < start || !e.GetProperty("name").GetString()!.EndsWith("_kernel_time", StringComparison.Ordinal)) continue;
                byOp[op.GetString()!] = byOp.GetValueOrDefault(op.GetString()!) + e.GetProperty("dur").GetInt64() / 1e6 / request.Repeats;
            }
            foreach (var (op, seconds) in byOp) figures[$"op:{op}"] = seconds;
            figures["largest_node_output_bytes"] = largest;
        }
        foreach (string written in Directory.GetFiles(Path.GetDirectoryName(prefix)!, Path.GetFileName(prefix) + "*.json")) File.Delete(written);
    }

    private static void RunVae(ProbeRequest request, Dictionary<string, double> figures, CancellationToken ct)
    {
        var bundle = ModelBundle.Open(request.Bundle);
        var factory = new OnnxSessionFactory(request.Session, Microsoft.Extensions.Logging.Abstractions.NullLogger.Instance);
        int latent = request.VaeTileLatent ?? bundle.DefaultHeight / bundle.VaeScaleFactor;
        var watch = Stopwatch.StartNew();
        using var vae = new VaeDecoderModel(factory, bundle, latent, latent);
        figures["create_s"] = watch.Elapsed.TotalSeconds;
        FillNormal(vae.Latents, 1f / bundle.VaeScalingFactor, 3);
        using var runOptions = new RunOptions();
        figures["vae_run_s"] = TimeRuns(() => vae.Run(runOptions), request, figures, ct);
        figures["vae_decode_s"] = figures["vae_run_s"] * request.VaeTiles;
    }

    /// <summary>Warm-up runs (the first is reported), then the median of the timed runs.</summary>
    private static double TimeRuns(Action run, ProbeRequest request, Dictionary<string, double> figures, CancellationToken ct)
    {
        var times = new List<double>();
        for (int i = 0; i < request.WarmUpRuns + request.Repeats; i++)
        {
            ct.ThrowIfCancellationRequested();
            var watch = Stopwatch.StartNew();
            run();
            if (i == 0) figures["first_run_s"] = watch.Elapsed.TotalSeconds;
            if (i >= request.WarmUpRuns) times.Add(watch.Elapsed.TotalSeconds);
        }
        return Median(times);
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
