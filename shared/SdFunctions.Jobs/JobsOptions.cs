using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>Settings of the generation service, bound from the "Jobs" configuration section (Jobs__… app settings).</summary>
public sealed class JobsOptions
{
    public const string Section = "Jobs";

    /// <summary>The queue the submit service writes to. The queue trigger listens on <see cref="JobQueue.Name"/>; keep them equal.</summary>
    public string QueueName { get; set; } = JobQueue.Name;

    /// <summary>Private container for job records (jobs/{id}.json) and idempotency keys.</summary>
    public string JobsContainer { get; set; } = "jobs";

    /// <summary>Private container for the images (images/{id}.png).</summary>
    public string ImagesContainer { get; set; } = "images";

    /// <summary>How long an image URL (read-only SAS) stays valid.</summary>
    public TimeSpan ImageUrlLifetime { get; set; } = TimeSpan.FromMinutes(15);

    /// <summary>How often a running job's progress is written (and its cancel flag read).</summary>
    public TimeSpan ProgressInterval { get; set; } = TimeSpan.FromSeconds(2);

    /// <summary>Must equal host.json's queues.maxDequeueCount: the attempt after which an error is final.</summary>
    public int MaxDequeueCount { get; set; } = 3;

    /// <summary>The image size the pipeline is compiled for (static shapes); requests may only ask for this size.</summary>
    public int Width { get; set; } = 512;
    public int Height { get; set; } = 512;

    public int MaxPromptLength { get; set; } = 1000;

    /// <summary>The largest request body without an image (JSON), and with one (JSON with a data URI, or multipart).</summary>
    public int MaxRequestBytes { get; set; } = 64 * 1024;
    public int MaxImageRequestBytes { get; set; } = 8 * 1024 * 1024;

    /// <summary>The largest init picture file accepted (what its data URI or part decodes to).</summary>
    public int MaxImageBytes { get; set; } = 6 * 1024 * 1024;

    /// <summary>
    /// How often a running job's record is touched even when its progress has not moved (during the model load, a slow step):
    /// the heartbeat that shows its run is alive.
    /// </summary>
    public TimeSpan HeartbeatInterval { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>A run whose heartbeat is older than this is dead (its instance crashed): another delivery takes the job over.</summary>
    public TimeSpan OwnerTimeout { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>
    /// How long a submission may still be sending its message. An idempotent replay of a job that is older than this and was
    /// never queued (its submitter died between the record and the queue) queues it.
    /// </summary>
    public TimeSpan SubmitGracePeriod { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>The sweep (every minute) queues a job left unqueued for longer than this, so no job waits more than this plus a minute.</summary>
    public TimeSpan RequeueAfter { get; set; } = TimeSpan.FromMinutes(2);

    /// <summary>A job that could not be queued for this long is failed instead: its client has long stopped waiting.</summary>
    public TimeSpan MaxQueueWait { get; set; } = TimeSpan.FromHours(1);

    /// <summary>
    /// How long a finished run keeps retrying to upload its images and record its outcome through a storage outage (it holds the
    /// images in memory meanwhile), so an outage shorter than this loses nothing and reruns nothing. At most the owner timeout by
    /// default: past it another delivery may take the job over (and the run then gives way).
    /// </summary>
    public TimeSpan PublishRetryWindow { get; set; } = TimeSpan.FromMinutes(1);

    /// <summary>
    /// The time an HTTP request may spend on storage in all (its retries included) before it answers 503: below the 100 s after
    /// which .NET's HttpClient gives up, so clients see the problem. The worker keeps the longer per-call retries.
    /// </summary>
    public TimeSpan HttpTimeBudget { get; set; } = TimeSpan.FromSeconds(10);

    /// <summary>Storage calls: retries after the first try, the delay before the first retry (it doubles), and each try's network timeout.</summary>
    public int StorageMaxRetries { get; set; } = 3;
    public TimeSpan StorageRetryDelay { get; set; } = TimeSpan.FromSeconds(0.8);
    public TimeSpan StorageNetworkTimeout { get; set; } = TimeSpan.FromSeconds(30);
}

/// <summary>Where the model bundle comes from, bound from the "Model" configuration section.</summary>
public sealed class ModelOptions
{
    public const string Section = "Model";

    /// <summary>A local bundle folder (e.g. an Azure Files mount). Relative paths are from the app's folder.</summary>
    public string? Directory { get; set; }

    /// <summary><see cref="Directory"/> as a full path (null when unset).</summary>
    public string? BundleDirectory => Directory is { Length: > 0 } dir ? FromAppFolder(dir) : null;

    /// <summary>Or: a blob container and prefix holding the bundle, downloaded once per instance to <see cref="CacheDirectory"/>.</summary>
    public string? BlobContainer { get; set; }
    public string BlobPrefix { get; set; } = "";

    /// <summary>Where downloaded bundles and optimized graphs are kept on the instance. Relative paths are from the app's folder.</summary>
    public string CacheDirectory { get; set; } = Path.Combine(Path.GetTempPath(), "sdfunctions");

    /// <summary><see cref="CacheDirectory"/> as a full path.</summary>
    public string CacheFolder => FromAppFolder(CacheDirectory);

    // The host starts the worker in the app's folder in Azure but not always locally: relative settings mean the app's folder.
    private static string FromAppFolder(string path) => Path.IsPathRooted(path) ? path : Path.GetFullPath(Path.Combine(AppContext.BaseDirectory, path));

    /// <summary>
    /// The decoder requests get when they name none, and the one loaded with the model: full or tiny (TAESD). Null = the
    /// full VAE when the bundle has one. A few-step service with tiny here never loads the full VAE unless a request asks.
    /// </summary>
    public string? DefaultDecoder { get; set; }

    /// <summary>The tile side (px) of a tiled VAE decode (requests with tiledDecode); null = the VAE config's sample_size, as diffusers (512 for SD 1.x: 256 saves memory at 512²).</summary>
    public int? DecodeTileSize { get; set; }

    /// <summary>Intra-op threads; null = physical cores.</summary>
    public int? Threads { get; set; }

    /// <summary>
    /// What the instance should stay under, e.g. "3GB" (EP1 has 3.5 GB) or "2.5GB", "1536MiB", a byte count; null = no budget.
    /// The pipeline measures its models at load and chooses tiled VAE decodes and released arenas to fit (see MemoryPlan).
    /// </summary>
    public string? MemoryBudget { get; set; }

    /// <summary><see cref="MemoryBudget"/> in bytes (null when unset); throws <see cref="FormatException"/> for a bad value.</summary>
    public long? MemoryBudgetBytes => MemoryBudget is { Length: > 0 } text ? MemoryPlan.ParseBytes(text) : null;
}
