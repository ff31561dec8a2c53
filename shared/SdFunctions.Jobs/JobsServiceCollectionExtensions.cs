using Azure.Identity;
using Azure.Storage.Blobs;
using Azure.Storage.Queues;
using Microsoft.Extensions.Azure;
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
    /// (AzureWebJobsStorage: leases, keys, timers), so the app holds no rights on the host's secrets. Locally both name one Azurite.
    /// </summary>
    public const string StorageSetting = "JobsStorage";

    public static IServiceCollection AddGenerationJobs(this IServiceCollection services, IConfiguration configuration)
    {
        services.AddOptions<JobsOptions>().Bind(configuration.GetSection(JobsOptions.Section)).ValidateOnStart();
        services.AddOptions<ModelOptions>().Bind(configuration.GetSection(ModelOptions.Section)).ValidateOnStart();
        services.AddOptions<Webhooks.WebhookOptions>().Bind(configuration.GetSection(Webhooks.WebhookOptions.Section)).ValidateOnStart();
        services.AddSingleton<IValidateOptions<JobsOptions>, SettingsValidation.Jobs>();
        services.AddSingleton<IValidateOptions<ModelOptions>, SettingsValidation.Model>();
        services.AddSingleton<IValidateOptions<Webhooks.WebhookOptions>, SettingsValidation.Webhooks>();
        services.AddSingleton(TimeProvider.System);

        services.AddAzureClients(clients =>
        {
            var storage = StorageSettings.Read(configuration, StorageSetting);
            clients.AddBlobServiceClient(storage.For("blob")).ConfigureOptions((o, sp) => StorageSettings.ApplyRetry(o.Retry, Jobs(sp)));
            clients.AddQueueServiceClient(storage.For("queue")).ConfigureOptions((o, sp) =>
            {
                o.MessageEncoding = JobQueue.MessageEncoding;
                StorageSettings.ApplyRetry(o.Retry, Jobs(sp));
            });
        });
        services.AddSingleton(sp => new JobStore(Blobs(sp).GetBlobContainerClient(Jobs(sp).JobsContainer)));
        services.AddSingleton(sp => new ImageStore(Blobs(sp).GetBlobContainerClient(Jobs(sp).ImagesContainer), Jobs(sp).ImageUrlLifetime));
        services.AddSingleton(sp => new JobQueue(Queues(sp).GetQueueClient(Jobs(sp).QueueName), Queues(sp).GetQueueClient(Jobs(sp).QueueName + "-poison")));
        services.AddSingleton(sp =>
        {
            string name = sp.GetRequiredService<IOptions<Webhooks.WebhookOptions>>().Value.QueueName;
            return new Webhooks.WebhookQueue(Queues(sp).GetQueueClient(name), Queues(sp).GetQueueClient(name + "-poison"));
        });
        services.AddSingleton<Webhooks.WebhookSender>();
        services.AddSingleton<JobTransitions>();
        services.AddSingleton<ModelProfiles>();
        services.AddSingleton<ServiceHealth>();
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
            string dir = await new ModelLocator(model, Blobs(sp), logger).ResolveAsync(ct);
            var pipeline = await StableDiffusionPipeline.LoadAsync(dir, new PipelineOptions
            {
                Width = Jobs(sp).Width, Height = Jobs(sp).Height, DefaultDecoder = model.DefaultDecoder, DecodeTileSize = model.DecodeTileSize,
                MemoryBudget = model.MemoryBudgetBytes,
                Session = new SessionSettings { IntraOpThreads = model.Threads, OptimizedModelCacheDirectory = Path.Combine(model.CacheFolder, "ort") },
            }, logger, ct);
            sp.GetRequiredService<JobsTelemetry>().RecordModelLoad(watch.Elapsed);
            return pipeline;
        }));
        return services;
    }

    private static JobsOptions Jobs(IServiceProvider sp) => sp.GetRequiredService<IOptions<JobsOptions>>().Value;
    private static BlobServiceClient Blobs(IServiceProvider sp) => sp.GetRequiredService<BlobServiceClient>();
    private static QueueServiceClient Queues(IServiceProvider sp) => sp.GetRequiredService<QueueServiceClient>();
}

/// <summary>
/// The data account's setting, in the forms the Functions host reads for the queue trigger's <c>Connection</c>: a connection
/// string (local, Azurite), or identity-based settings <c>JobsStorage__accountName</c> (or <c>__blobServiceUri</c> /
/// <c>__queueServiceUri</c>) with <c>__credential=managedidentity</c> and an optional <c>__clientId</c>. Handed to
/// Microsoft.Extensions.Azure in its own shape (a connection string, or <c>serviceUri</c> + credential keys). There is no
/// fallback to another setting: the triggers read this one, so an app that used any other would accept jobs nothing runs.
/// </summary>
public sealed class StorageSettings
{
    private readonly IConfigurationSection _section;
    private StorageSettings(IConfigurationSection section) => _section = section;

    /// <exception cref="SettingsException">The setting is missing or names no account.</exception>
    public static StorageSettings Read(IConfiguration configuration, string name)
    {
        var section = configuration.GetSection(name);
        bool identityBased = section["accountName"] is { Length: > 0 } || (section["blobServiceUri"] is { Length: > 0 } && section["queueServiceUri"] is { Length: > 0 });
        if (section.Value is not { Length: > 0 } && !identityBased)
            throw new SettingsException($"{name} is not set: give it a storage connection string (UseDevelopmentStorage=true for Azurite), " +
                $"or {name}__accountName with {name}__credential=managedidentity. The queue triggers read it, so the app reads no other account.");
        return new StorageSettings(section);
    }

    /// <summary>The configuration Microsoft.Extensions.Azure builds the <paramref name="service"/> ("blob" or "queue") client from.</summary>
    public IConfiguration For(string service)
    {
        if (_section.Value is { Length: > 0 }) return _section; // a connection string
        string serviceUri = _section[$"{service}ServiceUri"] is { Length: > 0 } uri ? uri : $"https://{_section["accountName"]}.{service}.core.windows.net";
        return new ConfigurationBuilder().AddInMemoryCollection(new Dictionary<string, string?>
        {
            ["serviceUri"] = serviceUri, ["credential"] = _section["credential"], ["clientId"] = _section["clientId"],
        }).Build();
    }

    /// <summary>The SDK's retries as the Jobs settings tune them (tests shorten them to see an outage quickly).</summary>
    public static void ApplyRetry(Azure.Core.RetryOptions retry, JobsOptions jobs)
    {
        retry.MaxRetries = jobs.StorageMaxRetries;
        retry.Delay = jobs.StorageRetryDelay;
        retry.NetworkTimeout = jobs.StorageNetworkTimeout;
    }

    /// <summary>The app's managed identity: user-assigned when a client id is given, else system-assigned.</summary>
    public static ManagedIdentityCredential ManagedIdentity(string? clientId) =>
        new(clientId is { Length: > 0 } id ? ManagedIdentityId.FromUserAssignedClientId(id) : ManagedIdentityId.SystemAssigned);
}

/// <summary>A setting the app cannot start with; its message is the one line the app prints before it exits.</summary>
public sealed class SettingsException(string message) : Exception(message);
