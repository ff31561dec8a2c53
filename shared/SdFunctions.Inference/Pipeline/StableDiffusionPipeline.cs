using System.Diagnostics;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Logging.Abstractions;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;
using SdFunctions.Inference.Models;
using SdFunctions.Inference.Runtime;
using SdFunctions.Inference.Schedulers;
using SdFunctions.Inference.Text;

namespace SdFunctions.Inference.Pipeline;

/// <summary>
/// Stable Diffusion 1.x text-to-image and image-to-image on ONNX Runtime, computing what diffusers' StableDiffusionPipeline
/// (for LCM bundles LatentConsistencyModelPipeline, with an init image StableDiffusionImg2ImgPipeline) computes: tokenize, encode
/// the prompt, denoise in one loop whose UNet conditioning (<see cref="ClassifierFreeGuidance"/>, <see cref="EmbeddedGuidance"/>,
/// <see cref="NoGuidance"/>) and start (<see cref="NoiseStart"/>, <see cref="ImageStart"/>) are small parts chosen per request,
/// decode with the chosen decoder (VAE or TAESD), 8-bit RGB. Sessions are created once with
/// static shapes and their buffers reused across steps and requests. Safe to share: generations run one at a time (each
/// already uses every core), later callers wait their turn.
/// </summary>
public sealed class StableDiffusionPipeline : IDisposable
{
    private readonly ILogger _logger;
    private readonly OnnxSessionFactory _factory;
    private readonly TextEncoderModel _textEncoder;
    private readonly Dictionary<int, UNetModel> _unets = [];
    private readonly DecoderCatalog _decoders;
    private VaeEncoderModel? _encoder; // built when image-to-image is first asked for
    private readonly float[] _emptyPromptEmbedding;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly List<SessionLoadInfo> _loadInfo = [];
    private bool _warnedFractionalTimesteps;
    private bool _disposed;

    public ModelBundle Bundle { get; }
    public ClipTokenizer Tokenizer { get; }
    public int Width { get; }
    public int Height { get; }

    /// <summary>What the model can do as loaded (its compiled size, its default decoder): every request is checked against it.</summary>
    public ModelProfile Profile { get; }
    public int LatentChannels => Profile.LatentChannels;
    public int LatentHeight => Profile.LatentHeight;
    public int LatentWidth => Profile.LatentWidth;
    public string DefaultScheduler => Profile.DefaultScheduler;

    /// <summary>The schedulers the bundle's scheduler_config.json can configure (all seven for SD 1.x configs).</summary>
    public IReadOnlyList<string> SupportedSchedulers => [.. Profile.SchedulerNames];

    /// <summary>The decoders a request may name (full, tiny), the one it gets when it names none first.</summary>
    public IReadOnlyList<string> SupportedDecoders => Profile.Decoders;
    public string DefaultDecoder => Profile.DefaultDecoder;

    /// <summary>The UNet batch loaded first: fixed by an optimized UNet's graph, else 2 (guidance), or 1 for guidance-distilled UNets.</summary>
    public int DefaultUNetBatch => Profile.UNetBatch;
    public TimeSpan LoadTime { get; }
    public IReadOnlyList<SessionLoadInfo> Sessions => [.. _loadInfo, .. _decoders.Loaded];

    /// <summary>How this pipeline keeps under its memory budget (<see cref="MemoryPlan.Unlimited"/> without one).</summary>
    public MemoryPlan Memory { get; }

    /// <summary>True when the UNet takes int64 timesteps (fractional scheduler timesteps are truncated).</summary>
    public bool IntegerTimestepUnet => _unets[DefaultUNetBatch].IntegerTimestep;

    private StableDiffusionPipeline(string modelDirectory, PipelineOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var watch = Stopwatch.StartNew();
        _logger = logger;
        Bundle = ModelBundle.Open(modelDirectory);
        Tokenizer = Bundle.Tokenizer;
        var profile = ModelProfile.Read(Bundle);
        if (options.DefaultDecoder is { } named && !profile.Decoders.Contains(named))
            throw new ModelBundleException($"{Bundle.Directory} has no '{named}' decoder; it has: {string.Join(", ", profile.Decoders)}.");
        Width = options.Width ?? Bundle.DefaultWidth;
        Height = options.Height ?? Bundle.DefaultHeight;
        Profile = profile.For(Width, Height, options.DefaultDecoder);
        int multiple = Bundle.VaeScaleFactor * 8; // the UNet halves the latents three times
        if (Width <= 0 || Height <= 0 || Width % multiple != 0 || Height % multiple != 0)
            throw new InvalidGenerationRequestException("size", $"Width and height must be positive multiples of {multiple}; got {Width}×{Height}.");
        if (PipelineOptions.MemoryNeededFor(Width, Height) is { } tooBig) throw new InvalidGenerationRequestException("size", tooBig);

        _factory = new OnnxSessionFactory(options.Session, logger);
        _decoders = new DecoderCatalog(_factory, Bundle, LatentHeight, LatentWidth, options.DecodeTileSize);
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            _textEncoder = new TextEncoderModel(_factory, Bundle, Tokenizer.MaxLength);
            _loadInfo.Add(_textEncoder.LoadInfo);
            cancellationToken.ThrowIfCancellationRequested();
            var unet = Unet(DefaultUNetBatch);
            cancellationToken.ThrowIfCancellationRequested();

            using var runOptions = new RunOptions();
            using var releasing = options.MemoryBudget is null ? null : MemoryPlan.ReleasingRunOptions();
            _emptyPromptEmbedding = _textEncoder.Encode(Tokenizer.Encode("").Ids, releasing ?? runOptions);
            // A budget is planned on what the models really hold, so the UNet runs once (its arena grows to its size) either way.
            if (options.WarmUp || options.MemoryBudget is not null) unet.Run(Bundle.Scheduler.NumTrainTimesteps - 1, runOptions);
            cancellationToken.ThrowIfCancellationRequested();
            Memory = options.MemoryBudget is { } budget ? PlanMemory(budget, releasing!) : MemoryPlan.Unlimited;
            // The decoder a request without one gets, as its plan would decode (tiled when the budget says so).
            var decoder = _decoders.Get(GenerationPlanner.DecodeFor(new GenerationRequest { Prompt = "" }, Profile, Memory));
            if (options.WarmUp) decoder.DecodeToRgb(new float[Profile.LatentSize], LatentHeight, LatentWidth, releasing ?? runOptions);
        }
        catch
        {
            DisposeSessions();
            throw;
        }
        LoadTime = watch.Elapsed;
        _logger.LogInformation("Loaded {Model} for {Width}×{Height} in {Seconds:F1} s (ONNX Runtime {Version}, {Threads} threads)",
            Bundle.Name, Width, Height, LoadTime.TotalSeconds, OnnxSessionFactory.OrtVersion, options.Session.IntraOpThreads ?? CpuInfo.PhysicalCores);
    }

    /// <summary>
    /// Measures the full VAE decoder's activations per pixel with one decode of a 256² tile (or the image, if smaller) (the peak restarted just before it),
    /// then chooses the plan against what is resident with it: the text encoder's and the UNet's sessions after their first runs, and the decoder's weights.
    /// </summary>
    private MemoryPlan PlanMemory(long budget, RunOptions releasing)
    {
        var vae = Bundle.Decoders.FirstOrDefault(d => d.Name == DecoderComponent.Full);
        if (vae is null) return MemoryPlan.Choose(budget, ProcessMemory.Resident, 0, Width, Height);
        // Where the decode cannot be measured (below), the profile's estimate from the decoder's width.
        double perPixel = Profile.FullDecodeBytesPerPixel ?? 0;
        // A service whose default is TAESD never loads the full VAE unless a request asks: measuring it would cost what the budget saves.
        if (DefaultDecoder != DecoderComponent.Full) return MemoryPlan.Choose(budget, ProcessMemory.Resident, perPixel, Width, Height);
        int probe = Math.Min(256, Math.Min(Width, Height)) / Bundle.VaeScaleFactor * Bundle.VaeScaleFactor;
        long resident;
        using (var tiled = new TiledVaeDecoder(_factory, Bundle, vae, probe))
        {
            var z = new float[LatentChannels * (probe / Bundle.VaeScaleFactor) * (probe / Bundle.VaeScaleFactor)];
            resident = ProcessMemory.Resident; // the decoder's weights included: a decode holds them, whole or tiled
            if (ProcessMemory.ResetPeak())
            {
                tiled.Decode(z, probe / Bundle.VaeScaleFactor, probe / Bundle.VaeScaleFactor, releasing);
                perPixel = Math.Max(0, ProcessMemory.Peak - resident) / (double)(probe * probe);
            }
        }
        var plan = MemoryPlan.Choose(budget, resident, perPixel, Width, Height);
        _logger.Log(plan.Met ? LogLevel.Information : LogLevel.Warning,
            "Memory budget {Budget:F2} GB: {Resident:F2} GB resident after loading, the VAE decoder needs {PerPixel:F0} bytes per pixel; " +
            "decoding {How}, expected peak {Expected:F2} GB{Unmet}",
            budget / 1e9, resident / 1e9, perPixel, plan.DecodeTileSize is { } t ? $"in tiles of {t} px" : "whole", plan.ExpectedPeakBytes / 1e9,
            plan.Met ? "" : " (over the budget: this is the leanest plan there is)");
        return plan;
    }

    /// <summary>Opens the bundle, checks it and creates every session. CPU-heavy: runs on the thread pool.</summary>
    public static Task<StableDiffusionPipeline> LoadAsync(string modelDirectory, PipelineOptions? options = null, ILogger? logger = null,
        CancellationToken cancellationToken = default) =>
        Task.Run(() => new StableDiffusionPipeline(modelDirectory, options ?? new PipelineOptions(), logger ?? NullLogger.Instance, cancellationToken),
            cancellationToken);

    /// <summary>What a request gets for what it leaves out, with <paramref name="scheduler"/> (null = the bundle's).</summary>
    public GenerationDefaults DefaultsFor(string? scheduler) => Profile.DefaultsFor(scheduler);

    /// <summary>Throws <see cref="InvalidGenerationRequestException"/> naming the first broken rule (<see cref="GenerationRules"/>).</summary>
    public void Validate(GenerationRequest request) => GenerationRules.ThrowIfInvalid(request, Profile);

    /// <summary>Generates one image. Checks <paramref name="cancellationToken"/> between steps and aborts a running model call.</summary>
    public Task<GenerationResult> GenerateAsync(GenerationRequest request, IProgress<GenerationProgress>? progress = null,
        CancellationToken cancellationToken = default) =>
        GenerateAsync(request, progress, unetObserver: null, cancellationToken);

    /// <summary>Generates one image, showing <paramref name="unetObserver"/> the UNet's inputs at every call.</summary>
    public async Task<GenerationResult> GenerateAsync(GenerationRequest request, IProgress<GenerationProgress>? progress,
        IUNetInputObserver? unetObserver, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(request);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            using var releasing = Memory.ReleaseArenas ? MemoryPlan.ReleasingRunOptions() : null;
            using var abort = cancellationToken.Register(() =>
            {
                runOptions.Terminate = true;
                if (releasing is not null) releasing.Terminate = true;
            });
            return Generate(request, runOptions, releasing ?? runOptions, progress, unetObserver, cancellationToken);
        }
        catch (OnnxRuntimeException) when (cancellationToken.IsCancellationRequested)
        {
            throw new OperationCanceledException("The generation was canceled.", cancellationToken);
        }
        finally
        {
            _gate.Release();
        }
    }

    /// <param name="onceRunOptions">For the models that run once per image (text encoder, decoder): under a budget they release their arenas.</param>
    private GenerationResult Generate(GenerationRequest request, RunOptions runOptions, RunOptions onceRunOptions, IProgress<GenerationProgress>? progress,
        IUNetInputObserver? unetObserver, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        bool ownPeak = ProcessMemory.ResetPeak(); // generations run one at a time: from here the process's peak is this one's
        var plan = GenerationPlanner.Plan(request, Profile, Bundle.Scheduler, Memory);

        TokenizedPrompt prompt;
        UNetConditioning conditioning;
        TimeSpan textEncoderTime;
        using (var span = PipelineTelemetry.Source.StartActivity("encode text"))
            (prompt, conditioning, textEncoderTime) = Condition(request, plan, onceRunOptions, unetObserver, span);
        var encodeTime = total.Elapsed;
        WarnOnceIfTimestepsAreTruncated(_unets[conditioning.Batch], plan.Scheduler);

        var latents = new float[Profile.LatentSize];
        var noise = new SeededGaussianNoise(plan.Seed);
        LatentStart start = plan.Strength is not null
            ? new ImageStart(Encoder(), request.InitImage!, plan.BeginIndex, request.EncoderNoise, request.InitialLatents)
            : new NoiseStart(request.InitialLatents);
        var prepareTime = Timed(() =>
        {
            using (start.SpanName is { } name ? PipelineTelemetry.Source.StartActivity(name) : null) start.Prepare(plan.Scheduler, latents, noise, onceRunOptions);
        });
        var imageEncodeTime = start.SpanName is null ? TimeSpan.Zero : prepareTime; // a phase of its own only when it encodes an image
        var (stepTimes, unetTimes) = Denoise(plan, conditioning, start, latents, request.StepNoise ?? noise, runOptions, progress, total, ct);

        ct.ThrowIfCancellationRequested();
        var decodeStart = total.Elapsed;
        var decoder = _decoders.Get(plan.Decode);
        byte[] rgb = [];
        TimeSpan vaeTime;
        using (PipelineTelemetry.Source.StartActivity("decode latents")?.SetTag("sdf.decoder", decoder.Name))
            vaeTime = Timed(() => rgb = decoder.DecodeToRgb(latents, LatentHeight, LatentWidth, onceRunOptions));
        return new GenerationResult
        {
            Seed = plan.Seed, Scheduler = plan.Scheduler.Name, Steps = plan.Steps, GuidanceScale = plan.GuidanceScale, Width = Width, Height = Height,
            Decoder = decoder.Name, DecodeTileSize = decoder.TileSize, UNetBatch = conditioning.Batch, Conditioning = conditioning.Name,
            UNetCalls = plan.Timesteps.Count * conditioning.CallsPerStep, Strength = plan.Strength, Reproducible = start.Reproducible,
            CacheInterval = plan.Cache.Interval, CacheSchedule = plan.Cache.Interval > 1 ? plan.Cache.Kind : null,
            ShallowUNetCalls = plan.Cache.ShallowCalls * conditioning.CallsPerStep,
            Rgb = rgb, Latents = latents, PromptTruncated = prompt.Truncated, PeakMemoryBytes = ownPeak ? ProcessMemory.Peak : null,
            Timings = new GenerationTimings(encodeTime, stepTimes, total.Elapsed - decodeStart, total.Elapsed, textEncoderTime, unetTimes, vaeTime)
            {
                ImageEncode = imageEncodeTime,
            },
        };
    }

    /// <summary>Text conditioning: the prompt, and for classifier-free guidance the negative prompt too, in the UNet the plan chose.</summary>
    private (TokenizedPrompt Prompt, UNetConditioning Conditioning, TimeSpan TextEncoderTime) Condition(GenerationRequest request, GenerationPlan plan,
        RunOptions runOptions, IUNetInputObserver? observer, Activity? span)
    {
        var prompt = Tokenizer.Encode(request.Prompt);
        span?.SetTag("sdf.prompt.truncated", prompt.Truncated);
        if (prompt.Truncated)
            _logger.LogWarning("The prompt has {Tokens} tokens; only the first {Max} are used", prompt.UntruncatedLength, Tokenizer.MaxLength);
        float[] embedding = [], negative = _emptyPromptEmbedding;
        var time = Timed(() =>
        {
            embedding = _textEncoder.Encode(prompt.Ids, runOptions);
            if (plan.Guidance == GuidanceKind.ClassifierFree && request.NegativePrompt.Length > 0)
                negative = _textEncoder.Encode(Tokenizer.Encode(request.NegativePrompt).Ids, runOptions);
        });
        var unet = Unet(plan.UNetBatch);
        UNetConditioning conditioning = plan.Guidance switch
        {
            GuidanceKind.Embedded => new EmbeddedGuidance(unet, embedding, plan.GuidanceScale, observer),
            GuidanceKind.ClassifierFree => new ClassifierFreeGuidance(unet, negative, embedding, plan.GuidanceScale, observer),
            _ => new NoGuidance(unet, embedding, observer),
        };
        return (prompt, conditioning, time);
    }

    /// <summary>The loop: scale, predict (the whole UNet or DeepCache's shallow branch, as the plan says), step. Returns each step's and each UNet call's time.</summary>
    private static (List<TimeSpan> Steps, List<TimeSpan> UNet) Denoise(GenerationPlan plan, UNetConditioning conditioning, LatentStart start, float[] latents,
        IGaussianNoise stepNoise, RunOptions runOptions, IProgress<GenerationProgress>? progress, Stopwatch total, CancellationToken ct)
    {
        var (timesteps, scheduler) = (plan.Timesteps, plan.Scheduler);
        float[] modelInput = new float[latents.Length], noisePrediction = new float[latents.Length];
        var stepTimes = new List<TimeSpan>(timesteps.Count);
        var unetTimes = new List<TimeSpan>(timesteps.Count);
        using var span = PipelineTelemetry.Source.StartActivity("denoise")?.SetTag("sdf.scheduler", scheduler.Name).SetTag("sdf.steps", timesteps.Count)
            .SetTag("sdf.conditioning", conditioning.Name).SetTag("sdf.unet.batch", conditioning.Batch).SetTag("sdf.cache_interval", plan.Cache.Interval)
            .SetTag("sdf.start", start.Name);
        for (int i = 0; i < timesteps.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            var stepStart = total.Elapsed;
            double t = timesteps[i];
            scheduler.ScaleModelInput(latents, t, modelInput);
            unetTimes.Add(Timed(() => conditioning.Predict(modelInput, t, noisePrediction, runOptions, plan.Cache.IsFull(i) ? UNetPass.Full : UNetPass.Shallow)));
            scheduler.Step(noisePrediction, t, latents, stepNoise);
            stepTimes.Add(total.Elapsed - stepStart);
            progress?.Report(new GenerationProgress(i + 1, timesteps.Count, total.Elapsed) { Steps = plan.Steps });
        }
        return (stepTimes, unetTimes);
    }

    private static TimeSpan Timed(Action action)
    {
        long start = Stopwatch.GetTimestamp();
        action();
        return Stopwatch.GetElapsedTime(start);
    }

    /// <summary>Decodes final latents [1, 4, H/8, W/8] (as <see cref="GenerationResult.Latents"/>) into RGB bytes, HWC, with a decoder (null = the default), whole.</summary>
    public async Task<byte[]> DecodeLatentsAsync(float[] latents, string? decoder = null, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        if (latents.Length != Profile.LatentSize)
            throw new InvalidGenerationRequestException("latents",
                $"Latents must hold [1, {LatentChannels}, {LatentHeight}, {LatentWidth}] = {Profile.LatentSize} floats; got {latents.Length}.");
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            return _decoders.Get(new DecodePlan(decoder ?? DefaultDecoder)).DecodeToRgb(latents, LatentHeight, LatentWidth, runOptions);
        }
        finally { _gate.Release(); }
    }

    /// <summary>
    /// An init image's latents as image-to-image starts from them before noise (diffusers' init_latents): scaling·(mean + std·ε),
    /// ε = <paramref name="epsilon"/> (read only by an encoder that returns its Gaussian's parameters).
    /// </summary>
    public async Task<float[]> EncodeImageAsync(InitImage image, float[] epsilon, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(new GenerationRequest { Prompt = "", InitImage = image, EncoderNoise = epsilon, Steps = 1, Strength = 1 });
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            var encoder = Encoder();
            encoder.SetImage(image.Rgb);
            var latents = new float[LatentChannels * LatentHeight * LatentWidth];
            encoder.Encode(epsilon, latents, runOptions);
            return latents;
        }
        finally { _gate.Release(); }
    }

    /// <summary>The text encoder's last_hidden_state [77, hidden] for a prompt (what the UNet is conditioned on).</summary>
    public async Task<float[]> EncodePromptAsync(string prompt, CancellationToken cancellationToken = default)
    {
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            return _textEncoder.Encode(Tokenizer.Encode(prompt).Ids, runOptions);
        }
        finally { _gate.Release(); }
    }

    /// <summary>NCHW in [−1, 1] → HWC bytes: clamp(x/2 + 0.5, 0, 1) · 255, rounded half to even like numpy.</summary>
    public static byte[] ToRgb8(float[] image, int height, int width)
    {
        int plane = height * width;
        var rgb = new byte[plane * 3];
        for (int c = 0; c < 3; c++)
            for (int p = 0; p < plane; p++)
            {
                float v = Math.Clamp(image[c * plane + p] / 2f + 0.5f, 0f, 1f);
                rgb[p * 3 + c] = (byte)MathF.Round(v * 255f, MidpointRounding.ToEven);
            }
        return rgb;
    }

    // The default batch is built at load; the other (of a dynamic-batch UNet) only when a request first needs it.
    private UNetModel Unet(int batch)
    {
        if (_unets.TryGetValue(batch, out var unet)) return unet;
        unet = new UNetModel(_factory, Bundle, batch, LatentHeight, LatentWidth, Tokenizer.MaxLength, _textEncoder.HiddenSize);
        _unets[batch] = unet;
        _loadInfo.Add(unet.LoadInfo);
        if (unet.ShallowLoadInfo is { } shallow) _loadInfo.Add(shallow);
        return unet;
    }

    private VaeEncoderModel Encoder()
    {
        if (_encoder is not null) return _encoder;
        var component = Bundle.Encoder ?? throw new InvalidGenerationRequestException("image", "This model has no image encoder (vae_encoder/).");
        _encoder = new VaeEncoderModel(_factory, Bundle, component, Height, Width);
        _loadInfo.Add(_encoder.LoadInfo);
        if (component.Kind == VaeEncoderKind.SampledInGraph)
            _logger.LogWarning("{Path} samples its latents inside the graph with an unseeded RandomNormalLike (optimum ≤ 1.23): " +
                "image-to-image results vary from run to run for the same seed; re-export with optimum ≥ 1.24 (latent_parameters) to make them reproducible",
                component.Model.Path);
        return _encoder;
    }

    private void WarnOnceIfTimestepsAreTruncated(UNetModel unet, IScheduler scheduler)
    {
        if (!unet.IntegerTimestep || _warnedFractionalTimesteps || scheduler.Timesteps.All(t => t == Math.Floor(t))) return;
        _warnedFractionalTimesteps = true;
        _logger.LogWarning("{Scheduler} uses fractional timesteps but {Path} takes int64: they are truncated, as diffusers' ONNX pipeline does",
            scheduler.Name, Bundle.Unet.Path);
    }

    private void DisposeSessions()
    {
        _textEncoder?.Dispose();
        foreach (var u in _unets.Values) u.Dispose();
        _unets.Clear();
        _decoders?.Dispose();
        _encoder?.Dispose();
        _encoder = null;
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        DisposeSessions();
        _gate.Dispose();
    }
}
