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
/// Stable Diffusion 1.x text-to-image on ONNX Runtime, computing what diffusers' StableDiffusionPipeline
/// computes: tokenize, encode prompt and negative prompt, denoise with classifier-free guidance as one
/// batch-2 UNet call per step, decode with the VAE, 8-bit RGB. Sessions are created once with static
/// shapes and their buffers reused across steps and requests. Safe to share: generations run one at a
/// time (each already uses every core), later callers wait their turn.
/// </summary>
public sealed class StableDiffusionPipeline : IDisposable
{
    private readonly ILogger _logger;
    private readonly OnnxSessionFactory _factory;
    private readonly TextEncoderModel _textEncoder;
    private readonly Dictionary<int, UNetModel> _unets = [];
    private readonly VaeDecoderModel _vae;
    private readonly float[] _emptyPromptEmbedding;
    private readonly SemaphoreSlim _gate = new(1, 1);
    private readonly List<SessionLoadInfo> _loadInfo = [];
    private bool _warnedFractionalTimesteps;
    private bool _disposed;

    public ModelBundle Bundle { get; }
    public ClipTokenizer Tokenizer { get; }
    public int Width { get; }
    public int Height { get; }
    public int LatentChannels => 4;
    public int LatentHeight => Height / Bundle.VaeScaleFactor;
    public int LatentWidth => Width / Bundle.VaeScaleFactor;
    public string DefaultScheduler { get; }

    /// <summary>The schedulers the bundle's scheduler_config.json can configure (all six for SD 1.x configs).</summary>
    public IReadOnlyList<string> SupportedSchedulers { get; }
    public TimeSpan LoadTime { get; }
    public IReadOnlyList<SessionLoadInfo> Sessions => _loadInfo;

    /// <summary>True when the UNet takes int64 timesteps (fractional scheduler timesteps are truncated).</summary>
    public bool IntegerTimestepUnet => _unets[2].IntegerTimestep;

    private StableDiffusionPipeline(string modelDirectory, PipelineOptions options, ILogger logger, CancellationToken cancellationToken)
    {
        var watch = Stopwatch.StartNew();
        _logger = logger;
        Bundle = ModelBundle.Open(modelDirectory);
        Tokenizer = Bundle.Tokenizer;
        DefaultScheduler = SchedulerFactory.DefaultName(Bundle.Scheduler);
        SupportedSchedulers = SchedulerFactory.Names.Where(name => SchedulerFactory.TryCreate(name, Bundle.Scheduler, out _)).ToList();
        if (!SupportedSchedulers.Contains(DefaultScheduler))
        {
            SchedulerFactory.TryCreate(DefaultScheduler, Bundle.Scheduler, out string? why);
            throw new ModelBundleException($"{Path.Combine(Bundle.Directory, "scheduler", "scheduler_config.json")}: {why}.");
        }
        Width = options.Width ?? Bundle.DefaultWidth;
        Height = options.Height ?? Bundle.DefaultHeight;
        int multiple = Bundle.VaeScaleFactor * 8; // the UNet halves the latents three times
        if (Width <= 0 || Height <= 0 || Width % multiple != 0 || Height % multiple != 0)
            throw new InvalidGenerationRequestException("size", $"Width and height must be positive multiples of {multiple}; got {Width}×{Height}.");

        _factory = new OnnxSessionFactory(options.Session, logger);
        try
        {
            cancellationToken.ThrowIfCancellationRequested();
            _textEncoder = new TextEncoderModel(_factory, Bundle, Tokenizer.MaxLength);
            _loadInfo.Add(_textEncoder.LoadInfo);
            cancellationToken.ThrowIfCancellationRequested();
            Unet(2);
            cancellationToken.ThrowIfCancellationRequested();
            _vae = new VaeDecoderModel(_factory, Bundle, LatentHeight, LatentWidth);
            _loadInfo.Add(_vae.LoadInfo);

            using var runOptions = new RunOptions();
            _emptyPromptEmbedding = _textEncoder.Encode(Tokenizer.Encode("").Ids, runOptions);
            if (options.WarmUp)
            {
                Unet(2).Run(Bundle.Scheduler.NumTrainTimesteps - 1, runOptions);
                _vae.Run(runOptions);
            }
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

    /// <summary>Opens the bundle, checks it and creates every session. CPU-heavy: runs on the thread pool.</summary>
    public static Task<StableDiffusionPipeline> LoadAsync(string modelDirectory, PipelineOptions? options = null, ILogger? logger = null,
        CancellationToken cancellationToken = default) =>
        Task.Run(() => new StableDiffusionPipeline(modelDirectory, options ?? new PipelineOptions(), logger ?? NullLogger.Instance, cancellationToken),
            cancellationToken);

    /// <summary>Throws <see cref="InvalidGenerationRequestException"/> naming the first bad parameter.</summary>
    public void Validate(GenerationRequest request)
    {
        request.ValidateParameters();
        string scheduler = request.Scheduler ?? DefaultScheduler;
        if (!SupportedSchedulers.Contains(scheduler))
        {
            SchedulerFactory.TryCreate(scheduler, Bundle.Scheduler, out string? why);
            throw new InvalidGenerationRequestException("scheduler",
                $"This model's scheduler config cannot configure '{scheduler}' ({why}). Choose one of: {string.Join(", ", SupportedSchedulers)}.");
        }
        if ((request.Width is { } w && w != Width) || (request.Height is { } h && h != Height))
            throw new InvalidGenerationRequestException("size",
                $"This model is compiled for {Width}×{Height} only; got {request.Width ?? Width}×{request.Height ?? Height}.");
        int latentSize = LatentChannels * LatentHeight * LatentWidth;
        if (request.InitialLatents is { } l && l.Length != latentSize)
            throw new InvalidGenerationRequestException("initialLatents",
                $"Initial latents must hold [1, {LatentChannels}, {LatentHeight}, {LatentWidth}] = {latentSize} floats; got {l.Length}.");
    }

    /// <summary>Generates one image. Checks <paramref name="cancellationToken"/> between steps and aborts a running model call.</summary>
    public Task<GenerationResult> GenerateAsync(GenerationRequest request, IProgress<GenerationProgress>? progress = null,
        CancellationToken cancellationToken = default) =>
        GenerateAsync(request, progress, unetObserver: null, cancellationToken);

    /// <summary>Generates one image, showing <paramref name="unetObserver"/> the UNet's inputs at every step.</summary>
    public async Task<GenerationResult> GenerateAsync(GenerationRequest request, IProgress<GenerationProgress>? progress,
        IUNetInputObserver? unetObserver, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        Validate(request);
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            using var abort = cancellationToken.Register(() => runOptions.Terminate = true);
            return Generate(request, runOptions, progress, unetObserver, cancellationToken);
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

    private GenerationResult Generate(GenerationRequest request, RunOptions runOptions, IProgress<GenerationProgress>? progress,
        IUNetInputObserver? unetObserver, CancellationToken ct)
    {
        var total = Stopwatch.StartNew();
        long seed = request.Seed ?? Random.Shared.NextInt64(0, GenerationRequest.MaxSeed + 1);
        string schedulerName = request.Scheduler ?? DefaultScheduler;
        var scheduler = SchedulerFactory.Create(schedulerName, Bundle.Scheduler, request.KarrasSigmas);
        scheduler.SetTimesteps(request.Steps);
        bool guided = request.GuidanceScale > 1.0;
        // Without guidance one conditional pass suffices; a UNet compiled for batch 2 runs it twice, side by side.
        int batch = guided || Bundle.FixedUnetBatch == 2 ? 2 : 1;
        var unet = Unet(batch);
        WarnOnceIfTimestepsAreTruncated(unet, scheduler);

        // Text conditioning: [negative; prompt] for guidance, otherwise the prompt in every half of the batch.
        var encodeWatch = Stopwatch.StartNew();
        var modelWatch = new Stopwatch();
        var prompt = Tokenizer.Encode(request.Prompt);
        if (prompt.Truncated)
            _logger.LogWarning("The prompt has {Tokens} tokens; only the first {Max} are used", prompt.UntruncatedLength, Tokenizer.MaxLength);
        modelWatch.Start();
        float[] promptEmbedding = _textEncoder.Encode(prompt.Ids, runOptions);
        modelWatch.Stop();
        if (guided)
        {
            var negativeIds = request.NegativePrompt.Length == 0 ? null : Tokenizer.Encode(request.NegativePrompt).Ids;
            modelWatch.Start();
            float[] negative = negativeIds is null ? _emptyPromptEmbedding : _textEncoder.Encode(negativeIds, runOptions);
            modelWatch.Stop();
            negative.CopyTo(unet.EncoderHiddenStates, 0);
            promptEmbedding.CopyTo(unet.EncoderHiddenStates, negative.Length);
        }
        else
            for (int half = 0; half < batch; half++) promptEmbedding.CopyTo(unet.EncoderHiddenStates, half * promptEmbedding.Length);
        var encodeTime = encodeWatch.Elapsed;
        var textEncoderTime = modelWatch.Elapsed;

        int n = LatentChannels * LatentHeight * LatentWidth;
        var noise = new SeededGaussianNoise(seed);
        float[] latents = new float[n];
        if (request.InitialLatents is { } given) given.CopyTo(latents, 0);
        else noise.Fill(latents);
        float sigma0 = scheduler.InitNoiseSigma;
        for (int k = 0; k < n; k++) latents[k] *= sigma0;

        float g = (float)request.GuidanceScale;
        float[] guidedOutput = guided ? new float[n] : [];
        var stepTimes = new List<TimeSpan>(scheduler.Timesteps.Count);
        var unetTimes = new List<TimeSpan>(scheduler.Timesteps.Count);
        for (int i = 0; i < scheduler.Timesteps.Count; i++)
        {
            ct.ThrowIfCancellationRequested();
            var stepWatch = Stopwatch.StartNew();
            double t = scheduler.Timesteps[i];
            scheduler.ScaleModelInput(latents, t, unet.Sample.AsSpan(0, n));
            if (batch == 2) unet.Sample.AsSpan(0, n).CopyTo(unet.Sample.AsSpan(n, n));
            unetObserver?.Observe(unet.Sample, t, unet.EncoderHiddenStates);
            modelWatch.Restart();
            unet.Run(t, runOptions);
            unetTimes.Add(modelWatch.Elapsed);
            if (guided)
            {
                var output = unet.Output;
                for (int k = 0; k < n; k++) guidedOutput[k] = output[k] + g * (output[n + k] - output[k]);
                scheduler.Step(guidedOutput, t, latents, noise);
            }
            else scheduler.Step(unet.Output.AsSpan(0, n), t, latents, noise);
            stepTimes.Add(stepWatch.Elapsed);
            progress?.Report(new GenerationProgress(i + 1, scheduler.Timesteps.Count, total.Elapsed));
        }

        ct.ThrowIfCancellationRequested();
        var decodeWatch = Stopwatch.StartNew();
        var (rgb, vaeTime) = Decode(latents, runOptions);
        var decodeTime = decodeWatch.Elapsed;

        return new GenerationResult
        {
            Seed = seed, Scheduler = schedulerName, Steps = request.Steps, Width = Width, Height = Height,
            Rgb = rgb, Latents = latents, PromptTruncated = prompt.Truncated,
            Timings = new GenerationTimings(encodeTime, stepTimes, decodeTime, total.Elapsed, textEncoderTime, unetTimes, vaeTime),
        };
    }

    /// <summary>Final latents [1, 4, H/8, W/8] (as <see cref="GenerationResult.Latents"/>) → RGB bytes, and the VAE's own run time.</summary>
    private (byte[] Rgb, TimeSpan VaeRun) Decode(float[] latents, RunOptions runOptions)
    {
        float scaling = Bundle.VaeScalingFactor;
        for (int k = 0; k < latents.Length; k++) _vae.Latents[k] = latents[k] / scaling;
        var watch = Stopwatch.StartNew();
        _vae.Run(runOptions);
        var vaeTime = watch.Elapsed;
        return (ToRgb8(_vae.Image, _vae.Height, _vae.Width), vaeTime);
    }

    /// <summary>Decodes final latents [1, 4, H/8, W/8] (as <see cref="GenerationResult.Latents"/>) into RGB bytes, HWC.</summary>
    public async Task<byte[]> DecodeLatentsAsync(float[] latents, CancellationToken cancellationToken = default)
    {
        ObjectDisposedException.ThrowIf(_disposed, this);
        int n = LatentChannels * LatentHeight * LatentWidth;
        if (latents.Length != n)
            throw new InvalidGenerationRequestException("latents", $"Latents must hold [1, {LatentChannels}, {LatentHeight}, {LatentWidth}] = {n} floats; got {latents.Length}.");
        await _gate.WaitAsync(cancellationToken).ConfigureAwait(false);
        try
        {
            using var runOptions = new RunOptions();
            return Decode(latents, runOptions).Rgb;
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
    internal static byte[] ToRgb8(float[] image, int height, int width)
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

    // Batch 2 (guidance) is built at load; batch 1 only when a request without guidance first needs it.
    private UNetModel Unet(int batch)
    {
        if (_unets.TryGetValue(batch, out var unet)) return unet;
        unet = new UNetModel(_factory, Bundle, batch, LatentHeight, LatentWidth, Tokenizer.MaxLength, _textEncoder.HiddenSize);
        _unets[batch] = unet;
        _loadInfo.Add(unet.LoadInfo);
        return unet;
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
        _vae?.Dispose();
    }

    public void Dispose()
    {
        if (_disposed) return;
        _disposed = true;
        DisposeSessions();
        _gate.Dispose();
    }
}
