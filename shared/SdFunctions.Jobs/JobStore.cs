using System.Security.Cryptography;
using System.Text;
using System.Text.Json;
using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;

namespace SdFunctions.Jobs;

/// <summary>
/// Job records as private blob JSON (jobs/{id}.json), changed only by read-modify-write with the blob's ETag,
/// so a worker's progress write and a client's cancel never overwrite each other. Idempotency keys live
/// beside them (idempotency/{sha256(scope, key)}.json), claimed with If-None-Match, and so do the markers of submissions
/// whose message is not known to be sent yet (pending/{id}), which the sweep lists.
/// </summary>
public sealed class JobStore(BlobContainerClient container)
{
    public Task EnsureCreatedAsync(CancellationToken ct) => container.CreateIfNotExistsAsync(PublicAccessType.None, cancellationToken: ct);

    private BlobClient JobBlob(string id) => container.GetBlobClient($"jobs/{id}.json");

    /// <summary>Creates the record; false when one with this id exists already.</summary>
    public async Task<bool> TryCreateAsync(JobRecord job, CancellationToken ct)
    {
        try
        {
            await JobBlob(job.Id).UploadAsync(Serialize(job), new BlobUploadOptions
            {
                Conditions = new BlobRequestConditions { IfNoneMatch = ETag.All },
                HttpHeaders = new BlobHttpHeaders { ContentType = "application/json" },
            }, ct);
            return true;
        }
        catch (RequestFailedException e) when (e.Status is 409 or 412) { return false; }
    }

    public async Task<JobRecord?> GetAsync(string id, CancellationToken ct) => (await GetWithETagAsync(id, ct)).Job;

    private async Task<(JobRecord? Job, ETag ETag)> GetWithETagAsync(string id, CancellationToken ct)
    {
        try
        {
            var download = await JobBlob(id).DownloadContentAsync(ct);
            return (JsonSerializer.Deserialize<JobRecord>(download.Value.Content.ToMemory().Span, JobJson.Options), download.Value.Details.ETag);
        }
        catch (RequestFailedException e) when (e.Status == 404) { return (null, default); }
    }

    /// <summary>
    /// Applies <paramref name="change"/> to the current record and writes it if nobody wrote in between, retrying
    /// on conflict. The change returns null to leave the record as it is. Returns the record as it ends up (null: no job).
    /// </summary>
    public async Task<JobRecord?> UpdateAsync(string id, Func<JobRecord, JobRecord?> change, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            var (current, etag) = await GetWithETagAsync(id, ct);
            if (current is null) return null;
            var updated = change(current);
            if (updated is null) return current;
            try
            {
                await JobBlob(id).UploadAsync(Serialize(updated), new BlobUploadOptions
                {
                    Conditions = new BlobRequestConditions { IfMatch = etag },
                    HttpHeaders = new BlobHttpHeaders { ContentType = "application/json" },
                }, ct);
                return updated;
            }
            catch (RequestFailedException e) when (e.Status == 412 && attempt < 20) { } // someone else wrote: re-read and re-apply
        }
    }

    public async Task DeleteAsync(string id, CancellationToken ct) => await JobBlob(id).DeleteIfExistsAsync(cancellationToken: ct);

    private BlobClient PendingBlob(string id) => container.GetBlobClient($"pending/{id}");

    /// <summary>Notes that job <paramref name="id"/>'s message is about to be sent: until cleared, the job may be one no worker will see.</summary>
    public async Task MarkPendingAsync(string id, CancellationToken ct) => await PendingBlob(id).UploadAsync(BinaryData.Empty, overwrite: true, ct);

    public async Task ClearPendingAsync(string id, CancellationToken ct) => await PendingBlob(id).DeleteIfExistsAsync(cancellationToken: ct);

    /// <summary>When the job's pending mark was made, or null when it has none (its message was sent).</summary>
    public async Task<DateTimeOffset?> PendingSinceAsync(string id, CancellationToken ct)
    {
        try { return (await PendingBlob(id).GetPropertiesAsync(cancellationToken: ct)).Value.CreatedOn; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    /// <summary>Every pending mark: the job id and when it was made.</summary>
    public async IAsyncEnumerable<(string Id, DateTimeOffset Since)> ListPendingAsync([System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        await foreach (var item in container.GetBlobsAsync(BlobTraits.None, BlobStates.None, "pending/", ct))
            yield return (item.Name["pending/".Length..], item.Properties.CreatedOn ?? DateTimeOffset.MinValue);
    }

    /// <summary>An idempotency key's claim: which job it made and a hash of the request that made it.</summary>
    public sealed record IdempotencyClaim(string JobId, string RequestHash);

    /// <summary>Claims <paramref name="key"/> for a new job; if it was claimed before, returns that earlier claim instead.</summary>
    public async Task<(bool Claimed, IdempotencyClaim Claim)> ClaimIdempotencyKeyAsync(string key, IdempotencyClaim claim, CancellationToken ct)
    {
        var blob = container.GetBlobClient($"idempotency/{Hash(key)}.json");
        try
        {
            await blob.UploadAsync(BinaryData.FromObjectAsJson(claim, JobJson.Options),
                new BlobUploadOptions { Conditions = new BlobRequestConditions { IfNoneMatch = ETag.All } }, ct);
            return (true, claim);
        }
        catch (RequestFailedException e) when (e.Status is 409 or 412)
        {
            var existing = (await blob.DownloadContentAsync(ct)).Value.Content.ToObjectFromJson<IdempotencyClaim>(JobJson.Options)!;
            return (false, existing);
        }
    }

    public async Task ReleaseIdempotencyKeyAsync(string key, CancellationToken ct) =>
        await container.GetBlobClient($"idempotency/{Hash(key)}.json").DeleteIfExistsAsync(cancellationToken: ct);

    public static string Hash(string text) => Convert.ToHexStringLower(SHA256.HashData(Encoding.UTF8.GetBytes(text)));

    private static BinaryData Serialize(JobRecord job) => BinaryData.FromObjectAsJson(job, JobJson.Options);
}
