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
}

/// <summary>Where the model bundle comes from, bound from the "Model" configuration section.</summary>
public sealed class ModelOptions
{
    public const string Section = "Model";

    /// <summary>A local bundle folder (e.g. an Azure Files mount). Relative paths are from the app's folder.</summary>
    public string? Directory { get; set; }

    /// <summary>Or: a blob container and prefix holding the bundle, downloaded once per instance to <see cref="CacheDirectory"/>.</summary>
    public string? BlobContainer { get; set; }
    public string BlobPrefix { get; set; } = "";

    /// <summary>Where downloaded bundles and optimized graphs are kept on the instance.</summary>
    public string CacheDirectory { get; set; } = Path.Combine(Path.GetTempPath(), "sdfunctions");

    /// <summary>
    /// The decoder requests get when they name none, and the one loaded with the model: full or tiny (TAESD). Null = the
    /// full VAE when the bundle has one. A few-step service with tiny here never loads the full VAE unless a request asks.
    /// </summary>
    public string? DefaultDecoder { get; set; }

    /// <summary>Intra-op threads; null = physical cores.</summary>
    public int? Threads { get; set; }
}
