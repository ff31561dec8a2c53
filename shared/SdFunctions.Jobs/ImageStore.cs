using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Azure.Storage.Blobs.Specialized;
using Azure.Storage.Sas;
using SdFunctions.Inference.Pipeline;

namespace SdFunctions.Jobs;

/// <summary>
/// A job's images (private: images/{id}.{ext} for the first, images/{id}-{k}.{ext} for image k of several) and short-lived
/// read-only links to them: a service SAS where the
/// client holds the account key (connection strings, Azurite), a user-delegation SAS where it signs in with an
/// identity (Azure), else none (clients then use the API's image route).
/// </summary>
public sealed class ImageStore(BlobContainerClient container, TimeSpan urlLifetime)
{
    private UserDelegationKey? _delegationKey;
    private readonly SemaphoreSlim _keyLock = new(1, 1);

    public Task EnsureCreatedAsync(CancellationToken ct) => container.CreateIfNotExistsAsync(PublicAccessType.None, cancellationToken: ct);

    /// <summary>The blob of image <paramref name="index"/> of a job, in a format of <see cref="ImageFile.Formats"/>.</summary>
    public static string BlobName(string id, int index, string format) =>
        $"{id}{(index == 0 ? "" : $"-{index}")}.{ImageFile.Extension(format)}";

    private BlobClient Blob(string id, int index, string format) => container.GetBlobClient(BlobName(id, index, format));

    /// <summary>Writes (or rewrites: a retried job overwrites its own images) an image with its metadata.</summary>
    public async Task UploadAsync(string id, int index, string format, byte[] file, IDictionary<string, string> metadata, CancellationToken ct) =>
        await Blob(id, index, format).UploadAsync(new BinaryData(file), new BlobUploadOptions
        {
            HttpHeaders = new BlobHttpHeaders { ContentType = ImageFile.ContentType(format), CacheControl = "private, max-age=31536000, immutable" },
            Metadata = metadata,
        }, ct);

    public async Task<BinaryData?> DownloadAsync(string id, int index, string format, CancellationToken ct)
    {
        try { return (await Blob(id, index, format).DownloadContentAsync(ct)).Value.Content; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    /// <summary>
    /// A link to every image of a succeeded job: a read-only SAS, or where this client cannot sign one, <paramref name="imageRoute"/>
    /// (the API's image route, with ?index=k past the first); null when there is no route to fall back to.
    /// </summary>
    public async Task<IReadOnlyList<string>?> GetReadUrlsAsync(JobRecord job, string? imageRoute, CancellationToken ct)
    {
        var urls = new List<string>();
        for (int k = 0; k < job.Input.N; k++)
        {
            string? url = await GetReadUrlAsync(job.Id, k, job.Input.OutputFormat, ct)
                ?? (imageRoute is null ? null : k == 0 ? imageRoute : $"{imageRoute}?index={k}");
            if (url is null) return null;
            urls.Add(url);
        }
        return urls;
    }

    /// <summary>A read-only SAS URL valid for the configured lifetime, or null when this client cannot sign one.</summary>
    public async Task<string?> GetReadUrlAsync(string id, int index, string format, CancellationToken ct)
    {
        var blob = Blob(id, index, format);
        var expires = DateTimeOffset.UtcNow.Add(urlLifetime);
        var sas = new BlobSasBuilder(BlobSasPermissions.Read, expires)
        {
            BlobContainerName = container.Name, BlobName = blob.Name, Resource = "b",
            StartsOn = DateTimeOffset.UtcNow.AddMinutes(-5), // clock skew between us and the storage service
        };
        if (blob.CanGenerateSasUri) return blob.GenerateSasUri(sas).ToString();

        var key = await GetDelegationKeyAsync(expires, ct);
        if (key is null) return null;
        var builder = new BlobUriBuilder(blob.Uri) { Sas = sas.ToSasQueryParameters(key, container.AccountName) };
        return builder.ToUri().ToString();
    }

    // One user-delegation key serves many URLs; it is renewed when it would expire before a new URL does.
    private async Task<UserDelegationKey?> GetDelegationKeyAsync(DateTimeOffset needUntil, CancellationToken ct)
    {
        await _keyLock.WaitAsync(ct);
        try
        {
            if (_delegationKey is { } k && k.SignedExpiresOn > needUntil) return k;
            var service = container.GetParentBlobServiceClient();
            _delegationKey = (await service.GetUserDelegationKeyAsync(DateTimeOffset.UtcNow.AddMinutes(-5), needUntil.AddHours(6), ct)).Value;
            return _delegationKey;
        }
        catch (RequestFailedException) { return null; } // no identity or no permission: fall back to the image route
        finally { _keyLock.Release(); }
    }
}
