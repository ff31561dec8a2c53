using Microsoft.Extensions.Hosting;
using Microsoft.Extensions.Logging;

namespace SdFunctions.Jobs;

/// <summary>
/// Creates the queues and private containers at start-up if they are missing (a fresh Azurite, a new account).
/// Where the identity may not create them (they come from the deployment), it logs and carries on.
/// </summary>
public sealed class StorageInitializer(JobStore store, ImageStore images, JobQueue queue, Webhooks.WebhookQueue webhooks, ILogger<StorageInitializer> logger) : IHostedService
{
    public async Task StartAsync(CancellationToken cancellationToken)
    {
        try
        {
            await store.EnsureCreatedAsync(cancellationToken);
            await images.EnsureCreatedAsync(cancellationToken);
            await queue.EnsureCreatedAsync(cancellationToken);
            await webhooks.EnsureCreatedAsync(cancellationToken);
        }
        catch (Exception e) when (StorageErrors.IsOutage(e))
        {
            logger.LogWarning(e, "Could not create the queues and containers; they must exist already");
        }
    }

    public Task StopAsync(CancellationToken cancellationToken) => Task.CompletedTask;
}
