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
/// beside them (idempotency/{sha256(scope, key)}.json), claimed with If-None-Match, and so do the empty marks the sweep
/// lists (<see cref="JobMark"/>): jobs that might otherwise wait for a message that never comes, or comes only much later.
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
    public async Task<JobRecord?> UpdateAsync(string id, Func<JobRecord, JobRecord?> change, CancellationToken ct) =>
        (await ChangeAsync(id, change, ct)).Job;

    /// <summary>As <see cref="UpdateAsync"/>, and whether this call wrote the change (false: no job, or the change declined).</summary>
    public async Task<(JobRecord? Job, bool Written)> ChangeAsync(string id, Func<JobRecord, JobRecord?> change, CancellationToken ct)
    {
        for (int attempt = 0; ; attempt++)
        {
            var (current, etag) = await GetWithETagAsync(id, ct);
            if (current is null) return (null, false);
            var updated = change(current);
            if (updated is null) return (current, false);
            try
            {
                await JobBlob(id).UploadAsync(Serialize(updated), new BlobUploadOptions
                {
                    Conditions = new BlobRequestConditions { IfMatch = etag },
                    HttpHeaders = new BlobHttpHeaders { ContentType = "application/json" },
                }, ct);
                return (updated, true);
            }
            catch (RequestFailedException e) when (e.Status == 412 && attempt < 20) { } // someone else wrote: re-read and re-apply
        }
    }

    public async Task DeleteAsync(string id, CancellationToken ct) => await JobBlob(id).DeleteIfExistsAsync(cancellationToken: ct);

    // Image-to-image's init picture, as received: job data, kept (and expired) with the record.
    private BlobClient InputImageBlob(string id) => container.GetBlobClient($"inputs/{id}");

    /// <summary>Stores (or, for a replay, rewrites the same) init picture of a job.</summary>
    public async Task UploadInputImageAsync(string id, byte[] bytes, string mediaType, CancellationToken ct) =>
        await InputImageBlob(id).UploadAsync(new BinaryData(bytes), new BlobUploadOptions { HttpHeaders = new BlobHttpHeaders { ContentType = mediaType } }, ct);

    /// <summary>A job's init picture; null when it is gone (expired or deleted).</summary>
    public async Task<BinaryData?> DownloadInputImageAsync(string id, CancellationToken ct)
    {
        try { return (await InputImageBlob(id).DownloadContentAsync(ct)).Value.Content; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    public async Task DeleteInputImageAsync(string id, CancellationToken ct) => await InputImageBlob(id).DeleteIfExistsAsync(cancellationToken: ct);

    private BlobClient MarkBlob(JobMark mark, string id) => container.GetBlobClient($"{MarkPrefix(mark)}{id}");

    private static string MarkPrefix(JobMark mark) => mark == JobMark.Pending ? "pending/" : "running/";

    /// <summary>Sets (or touches: its time becomes now) job <paramref name="id"/>'s mark of this kind.</summary>
    public async Task MarkAsync(JobMark mark, string id, CancellationToken ct) => await MarkBlob(mark, id).UploadAsync(BinaryData.Empty, overwrite: true, ct);

    public async Task ClearMarkAsync(JobMark mark, string id, CancellationToken ct) => await MarkBlob(mark, id).DeleteIfExistsAsync(cancellationToken: ct);

    /// <summary>When job <paramref name="id"/>'s mark was last set, or null when it has none.</summary>
    public async Task<DateTimeOffset?> MarkedAtAsync(JobMark mark, string id, CancellationToken ct)
    {
        try { return (await MarkBlob(mark, id).GetPropertiesAsync(cancellationToken: ct)).Value.LastModified; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    /// <summary>Every mark of this kind: the job id and when it was last set.</summary>
    public async IAsyncEnumerable<(string Id, DateTimeOffset MarkedAt)> ListMarksAsync(JobMark mark, [System.Runtime.CompilerServices.EnumeratorCancellation] CancellationToken ct)
    {
        string prefix = MarkPrefix(mark);
        await foreach (var item in container.GetBlobsAsync(BlobTraits.None, BlobStates.None, prefix, ct))
            yield return (item.Name[prefix.Length..], item.Properties.LastModified ?? DateTimeOffset.MinValue);
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

/// <summary>What the sweep (<see cref="InterruptedJobSweeper"/>) watches a job for.</summary>
public enum JobMark
{
    /// <summary>pending/{id}: set before the record is made, cleared once its message is sent. Left behind by a submitter that died in between.</summary>
    Pending,

    /// <summary>
    /// running/{id}: set when a run starts, cleared when the job finishes or its message is known to be back on the queue. Left
    /// behind by an instance that died mid-run, whose message the queue keeps invisible for as long as the host's lease (minutes).
    /// </summary>
    Running,
}
