using System.Diagnostics;
using System.Security.Cryptography;
using System.Text;
using Microsoft.Extensions.Logging;
using Microsoft.ML.OnnxRuntime;
using SdFunctions.Inference.Bundle;

namespace SdFunctions.Inference.Runtime;

/// <summary>How one session was created: from which file, whether the optimized-graph cache served it, and how long it took.</summary>
public sealed record SessionLoadInfo(string Component, string ModelPath, string LoadedFrom, bool FromCache, TimeSpan Duration);

/// <summary>
/// Creates ONNX Runtime sessions the way the pipeline needs them: static shapes through free-dimension
/// overrides named by the model's own dims, full graph optimization, one intra-op thread per physical core in a pool
/// every session shares (<see cref="OrtEnvironment"/>), no spinning between requests. With a cache directory, the optimized graph is saved once under a key
/// (model content, ORT version, CPU features, settings, shapes) and loaded from there next time, which skips minutes
/// of graph optimization on a cold start; a stale or broken cache entry is rebuilt. A bundle can also carry graphs
/// compiled ahead of time under the same keys (its <c>compiled/</c> folder): used when they match, ignored when not.
/// </summary>
public sealed class OnnxSessionFactory(SessionSettings settings, ILogger logger)
{
    public static string OrtVersion => OrtEnvironment.Instance.GetVersionString();

    /// <summary>The folder of a bundle that holds graphs compiled for it ahead of time, by the same keys as the cache.</summary>
    public const string CompiledFolder = "compiled";

    public (InferenceSession Session, SessionLoadInfo Info) Create(string component, string modelPath, IReadOnlyDictionary<string, long> dimOverrides)
    {
        var watch = Stopwatch.StartNew();
        string compiledRoot = Path.Combine(Path.GetDirectoryName(Path.GetDirectoryName(Path.GetFullPath(modelPath))!)!, CompiledFolder);
        string? cacheRoot = settings.OptimizedModelCacheDirectory is { Length: > 0 } c ? c : null;
        // The key hashes the model: computed only when a compiled folder or a cache could use it.
        string? key = Directory.Exists(compiledRoot) || cacheRoot is not null ? CacheKey(modelPath, dimOverrides) : null;

        // A graph compiled into the bundle (sdf optimize --compile) first: read-only, so a bad one is skipped, not deleted.
        string bundled = Path.Combine(compiledRoot, $"{component}-{key}", "model.onnx");
        if (key is not null && TryLoadOptimized(component, bundled, dimOverrides, "the graph compiled into the bundle") is { } compiled)
            return (compiled, new SessionLoadInfo(component, modelPath, bundled, true, watch.Elapsed));
        if (cacheRoot is null || key is null)
        {
            var session = CreateFromSource(modelPath, dimOverrides, saveTo: null);
            return (session, new SessionLoadInfo(component, modelPath, modelPath, false, watch.Elapsed));
        }

        string entry = Path.Combine(cacheRoot, $"{component}-{key}");
        string cached = Path.Combine(entry, "model.onnx");
        if (TryLoadOptimized(component, cached, dimOverrides, "the cached optimized graph") is { } fromCache)
            return (fromCache, new SessionLoadInfo(component, modelPath, cached, true, watch.Elapsed));
        TryDelete(entry); // missing, half-written by a crash or unloadable: rebuilt below

        // Build into a private folder, then publish it with one rename so a reader never sees half a file.
        string staging = Path.Combine(cacheRoot, $".{component}-{key}-{Guid.NewGuid():N}");
        Directory.CreateDirectory(staging);
        try
        {
            var session = CreateFromSource(modelPath, dimOverrides, saveTo: Path.Combine(staging, "model.onnx"));
            try { Directory.Move(staging, entry); }
            catch (IOException) { TryDelete(staging); } // another instance published the same entry first
            logger.LogInformation("{Component}: saved the optimized graph to {Path}", component, entry);
            return (session, new SessionLoadInfo(component, modelPath, modelPath, false, watch.Elapsed));
        }
        catch
        {
            TryDelete(staging);
            throw;
        }
    }

    /// <summary>An already optimized graph, or null when there is none or it does not load (logged).</summary>
    private InferenceSession? TryLoadOptimized(string component, string path, IReadOnlyDictionary<string, long> dims, string what)
    {
        if (!File.Exists(path)) return null;
        try
        {
            var session = CreateSession(path, dims, optimize: false, saveTo: null);
            logger.LogInformation("{Component}: loaded {What} {Path}", component, what, path);
            return session;
        }
        catch (OnnxRuntimeException e)
        {
            logger.LogWarning("{Component}: {What} {Path} failed to load ({Message}); optimizing the model instead", component, what, path, e.Message);
            return null;
        }
    }

    /// <summary>
    /// Writes the graph ONNX Runtime would run for <paramref name="modelPath"/> (after all of this factory's
    /// optimizations) to <paramref name="savePath"/>, weights beside it: to see which kernels it really uses.
    /// </summary>
    public void SaveOptimizedGraph(string modelPath, IReadOnlyDictionary<string, long> dimOverrides, string savePath)
    {
        using var session = CreateFromSource(modelPath, dimOverrides, savePath);
    }

    private InferenceSession CreateSession(string path, IReadOnlyDictionary<string, long> dims, bool optimize, string? saveTo)
    {
        int threads = settings.IntraOpThreads ?? CpuInfo.PhysicalCores;
        bool sharedPool = OrtEnvironment.GlobalThreads == threads; // creates the environment before any session
        using var options = new SessionOptions
        {
            GraphOptimizationLevel = optimize ? settings.GraphOptimizationLevel : GraphOptimizationLevel.ORT_DISABLE_ALL,
            IntraOpNumThreads = threads,
            InterOpNumThreads = 1,
            ExecutionMode = ExecutionMode.ORT_SEQUENTIAL,
            EnableMemoryPattern = settings.EnableMemoryPattern,
            EnableCpuMemArena = settings.EnableCpuMemArena,
        };
        foreach (var (name, value) in dims) options.AddFreeDimensionOverrideByName(name, value);
        if (settings.ProfilingPrefix is { } profile)
        {
            options.ProfileOutputPathPrefix = profile; // before enabling: enabling reads the prefix
            options.EnableProfiling = true;
        }
        if (sharedPool) options.DisablePerSessionThreads();
        // A pool of its own: stop busy-waiting as soon as a run ends, an idle instance should not burn its CPU.
        else options.AddSessionConfigEntry("session.force_spinning_stop", "1");
        if (settings.DisabledOptimizers.Count > 0)
            options.AddSessionConfigEntry("optimization.disable_specified_optimizers", string.Join(';', settings.DisabledOptimizers));
        if (saveTo is not null)
        {
            options.OptimizedModelFilePath = saveTo;
            // ORT warns that an ENABLE_ALL graph is hardware-specific; the cache key holds the CPU features for that reason.
            options.LogSeverityLevel = OrtLoggingLevel.ORT_LOGGING_LEVEL_ERROR;
            // Graphs over 2 GB cannot be one protobuf: weights go to a file beside the graph.
            options.AddSessionConfigEntry("session.optimized_model_external_initializers_file_name", "model.onnx.data");
            options.AddSessionConfigEntry("session.optimized_model_external_initializers_min_size_in_bytes", "1024");
        }
        return new InferenceSession(path, options);
    }

    /// <summary>Loads a bundle's own model file; ORT's failure becomes an error that names the file.</summary>
    private InferenceSession CreateFromSource(string path, IReadOnlyDictionary<string, long> dims, string? saveTo)
    {
        try
        {
            return CreateSession(path, dims, optimize: true, saveTo);
        }
        catch (OnnxRuntimeException e)
        {
            throw new ModelBundleException($"{path}: ONNX Runtime could not load it ({e.Message.Trim()}).", e);
        }
    }

    /// <summary>
    /// What an optimized graph depends on: the model's content, ORT's version, this CPU's features, the optimization
    /// settings and the shapes. Content, not path or file times, so that a bundle copied elsewhere (Azure Files, a blob
    /// download) still finds its graphs. The graph file is hashed whole; each weight file beside it by its size and
    /// 64 samples of 64 KiB spread over it, which tells apart any two trainings without reading gigabytes at start-up.
    /// </summary>
    private string CacheKey(string modelPath, IReadOnlyDictionary<string, long> dims)
    {
        var text = new StringBuilder();
        string full = Path.GetFullPath(modelPath), dir = Path.GetDirectoryName(full)!;
        using (var stream = File.OpenRead(full)) text.Append("graph=").Append(Convert.ToHexStringLower(SHA256.HashData(stream))).Append(';');
        foreach (string f in Directory.EnumerateFiles(dir).Where(f => f != full && !f.EndsWith(".json", StringComparison.Ordinal)).Order(StringComparer.Ordinal))
            text.Append(Path.GetFileName(f)).Append(':').Append(SampledHash(f)).Append(';');
        text.Append("|ort=").Append(OrtVersion).Append("|cpu=").Append(CpuInfo.FeatureSummary)
            .Append("|opt=").Append(settings.GraphOptimizationLevel).Append("|off=").AppendJoin(';', settings.DisabledOptimizers).Append("|dims=")
            .AppendJoin(',', dims.OrderBy(d => d.Key, StringComparer.Ordinal).Select(d => $"{d.Key}={d.Value}"));
        return Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text.ToString())))[..16];
    }

    private static string SampledHash(string path)
    {
        const int samples = 64, sampleSize = 64 * 1024;
        using var stream = File.OpenRead(path);
        using var hash = IncrementalHash.CreateHash(HashAlgorithmName.SHA256);
        hash.AppendData(BitConverter.GetBytes(stream.Length));
        var buffer = new byte[sampleSize];
        long stride = Math.Max(stream.Length / samples, 1);
        for (long offset = 0; offset < stream.Length; offset += Math.Max(stride, sampleSize))
        {
            stream.Position = offset;
            int read = stream.ReadAtLeast(buffer, sampleSize, throwOnEndOfStream: false);
            hash.AppendData(buffer, 0, read);
        }
        return Convert.ToHexStringLower(hash.GetHashAndReset());
    }

    private static void TryDelete(string dir)
    {
        try { if (Directory.Exists(dir)) Directory.Delete(dir, recursive: true); }
        catch (IOException) { }
        catch (UnauthorizedAccessException) { }
    }
}

/// <summary>ONNX Runtime settings for every session of a pipeline.</summary>
public sealed record SessionSettings
{
    /// <summary>Intra-op threads per session; null = the number of physical cores.</summary>
    public int? IntraOpThreads { get; init; }

    public GraphOptimizationLevel GraphOptimizationLevel { get; init; } = GraphOptimizationLevel.ORT_ENABLE_ALL;

    /// <summary>ORT's CPU memory arena: keeps freed activation blocks for the next run instead of returning them.</summary>
    public bool EnableCpuMemArena { get; init; } = true;

    /// <summary>
    /// ORT's memory pattern: one block per run planned from the first run's allocations. Off by default: measured on the
    /// SD 1.5 INT8 + ToMe UNet it raised peak RSS by 0.43 GB (2.02 vs 1.59 GB) with no speed difference beyond the
    /// machine's ±10 % noise (two bench runs disagreed on the sign), made the second run slow too (the block is
    /// allocated then), and raised the VAE decoder's peak at 512² by 0.65 GB.
    /// </summary>
    public bool EnableMemoryPattern { get; init; }

    /// <summary>
    /// ORT graph transformers to skip, by name (e.g. "ConstantFolding"). Folding makes steps faster but turns the
    /// exporters' <c>baddbmm(empty(...), beta=0)</c> attention input into constant [batch·heads, tokens, tokens] zero
    /// tensors: seconds of session creation and a cached graph ~70× the tiny UNet (396 MB vs 5.4 MB).
    /// </summary>
    public IReadOnlyList<string> DisabledOptimizers { get; init; } = [];

    /// <summary>Diagnostics: ORT writes each session's per-node timings (JSON) to a file starting with this prefix when it is disposed.</summary>
    public string? ProfilingPrefix { get; init; }

    /// <summary>Where optimized graphs are saved and reused; null = optimize on every load.</summary>
    public string? OptimizedModelCacheDirectory { get; init; }
}
