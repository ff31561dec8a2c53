using Azure.Core;
using Azure.Identity;
using Azure.Storage.Blobs;
using Azure.Storage.Queues;
using Microsoft.Extensions.Configuration;
using Microsoft.Extensions.DependencyInjection;
using Microsoft.Extensions.Logging;
using Microsoft.Extensions.Options;
using SdFunctions.Inference.Pipeline;
using SdFunctions.Inference.Runtime;

namespace SdFunctions.Jobs;

/// <summary>Registers the generation service, the worker and what they need, from configuration.</summary>
public static class JobsServiceCollectionExtensions
{
    /// <summary>
    /// The setting that names the data storage account (the generations queue, job records, images, the model), as the
    /// queue trigger and the app read it. In Azure it is a different account from the Functions host's own
    /// (<see cref="HostStorageSetting"/>: leases, keys, timers), so the app holds no rights on the host's secrets.
    /// </summary>
    public const string StorageSetting = "JobsStorage";

    /// <summary>The Functions host's storage; the app's data falls back to it when <see cref="StorageSetting"/> is absent (one Azurite locally).</summary>
    public const string HostStorageSetting = "AzureWebJobsStorage";

    public static IServiceCollection AddGenerationJobs(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<JobsOptions>().Bind(configuration.GetSection(JobsOptions.Section))
            .Validate(o => o.Width > 0 && o.Height > 0 && o.MaxDequeueCount > 0 && o.ProgressInterval > TimeSpan.Zero, "Jobs settings out of range")
            .Validate(o => o.HeartbeatInterval > TimeSpan.Zero && o.OwnerTimeout >= 2 * o.HeartbeatInterval && o.OwnerTimeout >= 2 * o.ProgressInterval,
                "Jobs:OwnerTimeout must be at least twice Jobs:HeartbeatInterval and Jobs:ProgressInterval, or live runs would be taken over")
            .ValidateOnStart();
        services.AddOptions<ModelOptions>().Bind(configuration.GetSection(ModelOptions.Section))
            .Validate(o => o.DecodeTileSize is not { } t || (t >= GenerationRequest.MinTileSize && t <= GenerationRequest.MaxTileSize && t % 8 == 0),
                $"Model:DecodeTileSize must be a multiple of 8 from {GenerationRequest.MinTileSize} to {GenerationRequest.MaxTileSize} pixels")
            .Validate(o => IsSize(o.MemoryBudget), "Model:MemoryBudget must be a positive size such as 3GB, 2.5GB, 1536MiB or a byte count")
            .ValidateOnStart();
        services.AddOptions<Webhooks.WebhookOptions>().Bind(configuration.GetSection(Webhooks.WebhookOptions.Section))
            .Validate(o => o.MaxAttempts >= 1 && o.RetryDelay >= TimeSpan.Zero && o.Timeout > TimeSpan.Zero, "Webhooks settings out of range")
            .ValidateOnStart();
        services.AddSingleton(TimeProvider.System);

        string storage = configuration.GetSection(StorageSetting).Exists() ? StorageSetting : HostStorageSetting;
        var (blobs, queues) = StorageClients.Create(configuration, storage,
            configuration.GetSection(JobsOptions.Section).Get<JobsOptions>() ?? new JobsOptions());
        services.AddSingleton(blobs);
        services.AddSingleton(queues);
        services.AddSingleton(sp => new JobStore(blobs.GetBlobContainerClient(Jobs(sp).JobsContainer)));
        services.AddSingleton(sp => new ImageStore(blobs.GetBlobContainerClient(Jobs(sp).ImagesContainer), Jobs(sp).ImageUrlLifetime));
        services.AddSingleton(sp => new JobQueue(queues.GetQueueClient(Jobs(sp).QueueName), queues.GetQueueClient(Jobs(sp).QueueName + "-poison")));
        services.AddSingleton(sp =>
        {
            string name = sp.GetRequiredService<IOptions<Webhooks.WebhookOptions>>().Value.QueueName;
            return new Webhooks.WebhookQueue(queues.GetQueueClient(name), queues.GetQueueClient(name + "-poison"), sp.GetRequiredService<ILogger<Webhooks.WebhookQueue>>());
        });
        services.AddSingleton<Webhooks.WebhookSender>();
        services.AddSingleton<GenerationService>();
        services.AddSingleton<GenerationWorker>();
        services.AddSingleton<InterruptedJobSweeper>();
        services.AddMetrics(); // the host adds it too; a bare service collection (tests, tools) needs it for JobsTelemetry
        services.AddSingleton<JobsTelemetry>();
        services.AddHostedService<StorageInitializer>();
        // One pipeline per instance, loaded on first use (the first job), shared by every invocation after it.
        services.AddSingleton(sp => new PipelineHolder(async ct =>
        {
            var model = sp.GetRequiredService<IOptions<ModelOptions>>().Value;
            var logger = sp.GetRequiredService<ILoggerFactory>().CreateLogger("SdFunctions.Pipeline");
            using var span = JobsTelemetry.StartModelLoad();
            var watch = System.Diagnostics.Stopwatch.StartNew();
            string dir = await new ModelLocator(model, blobs, logger).ResolveAsync(ct);
            var pipeline = await StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions
            {
                Width = Jobs(sp).Width, Height = Jobs(sp).Height, DefaultDecoder = model.DefaultDecoder, DecodeTileSize = model.DecodeTileSize,
                MemoryBudget = model.MemoryBudgetBytes,
                Session = new SessionSettings { IntraOpThreads = model.Threads, OptimizedModelCacheDirectory = Path.Combine(model.CacheDirectory, "ort") },
            }, logger, ct);
            sp.GetRequiredService<JobsTelemetry>().RecordModelLoad(watch.Elapsed);
            return pipeline;
        }));
        return services;
    }

    private static bool IsSize(string? text)
    {
        if (text is not { Length: > 0 }) return true;
        try { MemoryPlan.ParseBytes(text); return true; }
        catch (FormatException) { return false; }
    }

    private static JobsOptions Jobs(IServiceProvider sp) => sp.GetRequiredService<IOptions<JobsOptions>>().Value;
}

/// <summary>
/// Storage clients from the same setting the Functions host uses: a connection string (local, Azurite), or
/// identity-based settings <c>JobsStorage__accountName</c> (or <c>__blobServiceUri</c> / <c>__queueServiceUri</c>)
/// with the app's managed identity (<c>__credential=managedidentity</c>, optional <c>__clientId</c>).
/// </summary>
public static class StorageClients
{
    public static (BlobServiceClient Blobs, QueueServiceClient Queues) Create(IConfiguration configuration, string name, JobsOptions? jobs = null)
    {
        jobs ??= new JobsOptions();
        var blobOptions = new BlobClientOptions();
        var queueOptions = JobQueue.ClientOptions();
        foreach (var retry in new[] { blobOptions.Retry, queueOptions.Retry })
        {
            retry.MaxRetries = jobs.StorageMaxRetries;
            retry.Delay = jobs.StorageRetryDelay;
            retry.NetworkTimeout = jobs.StorageNetworkTimeout;
        }
        var section = configuration.GetSection(name);
        if (section.Value is { Length: > 0 } connectionString)
            return (new BlobServiceClient(connectionString, blobOptions), new QueueServiceClient(connectionString, queueOptions));

        string? account = section["accountName"];
        Uri? blobUri = section["blobServiceUri"] is { Length: > 0 } b ? new Uri(b) : account is null ? null : new Uri($"https://{account}.blob.core.windows.net");
        Uri? queueUri = section["queueServiceUri"] is { Length: > 0 } q ? new Uri(q) : account is null ? null : new Uri($"https://{account}.queue.core.windows.net");
        if (blobUri is null || queueUri is null)
            throw new InvalidOperationException($"Storage is not configured: set {name} (a connection string) or {name}__accountName (identity-based).");
        TokenCredential credential = section["credential"] == "managedidentity" ? ManagedIdentity(section["clientId"]) : new DefaultAzureCredential();
        return (new BlobServiceClient(blobUri, credential, blobOptions), new QueueServiceClient(queueUri, credential, queueOptions));
    }

    /// <summary>The app's managed identity: user-assigned when a client id is given, else system-assigned.</summary>
    public static ManagedIdentityCredential ManagedIdentity(string? clientId) =>
        new(clientId is { Length: > 0 } id ? ManagedIdentityId.FromUserAssignedClientId(id) : ManagedIdentityId.SystemAssigned);
}
