namespace SdFunctions.Functions.Tests;

/// <summary>Azurite behind two fault proxies (blob and queue), and the connection string that goes through them.</summary>
public sealed class FaultyStorage : IAsyncDisposable
{
    public FaultProxy Blobs { get; } = new(AzuriteFixture.BlobPort);
    public FaultProxy Queues { get; } = new(AzuriteFixture.QueuePort);

    public string ConnectionString => AzuriteFixture.ConnectionStringFor(Blobs.Port, Queues.Port);

    /// <summary>
    /// Test app settings: storage through the proxies, two quick retries (a pooled connection that Azurite closed when idle
    /// costs one) and short timeouts, so an outage shows within a second.
    /// </summary>
    public void Configure(Dictionary<string, string?> settings)
    {
        settings["JobsStorage"] = ConnectionString;
        settings["Jobs:StorageMaxRetries"] = "2";
        settings["Jobs:StorageRetryDelay"] = "00:00:00.050";
        settings["Jobs:StorageNetworkTimeout"] = "00:00:01";
    }

    public async ValueTask DisposeAsync()
    {
        await Blobs.DisposeAsync();
        await Queues.DisposeAsync();
    }
}
