using Azure;
using Azure.Storage.Blobs;
using Azure.Storage.Blobs.Models;
using Azure.Storage.Blobs.Specialized;
using Azure.Storage.Sas;

namespace SdFunctions.Jobs;

/// <summary>
/// The PNGs (images/{id}.png, private) and short-lived read-only links to them: a service SAS where the
/// client holds the account key (connection strings, Azurite), a user-delegation SAS where it signs in with an
/// identity (Azure), else none (clients then use the API's image route).
/// </summary>
public sealed class ImageStore(BlobContainerClient container, TimeSpan urlLifetime)
{
    private UserDelegationKey? _delegationKey;
    private readonly SemaphoreSlim _keyLock = new(1, 1);

    public Task EnsureCreatedAsync(CancellationToken ct) => container.CreateIfNotExistsAsync(PublicAccessType.None, cancellationToken: ct);

    private BlobClient Blob(string id) => container.GetBlobClient($"{id}.png");

    /// <summary>Writes (or rewrites: a retried job overwrites its own image) the PNG with its metadata.</summary>
    public async Task UploadAsync(string id, byte[] png, IDictionary<string, string> metadata, CancellationToken ct) =>
        await Blob(id).UploadAsync(new BinaryData(png), new BlobUploadOptions
        {
            HttpHeaders = new BlobHttpHeaders { ContentType = "image/png", CacheControl = "private, max-age=31536000, immutable" },
            Metadata = metadata,
        }, ct);

    public async Task<BinaryData?> DownloadAsync(string id, CancellationToken ct)
    {
        try { return (await Blob(id).DownloadContentAsync(ct)).Value.Content; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    public async Task<IDictionary<string, string>?> GetMetadataAsync(string id, CancellationToken ct)
    {
        try { return (await Blob(id).GetPropertiesAsync(cancellationToken: ct)).Value.Metadata; }
        catch (RequestFailedException e) when (e.Status == 404) { return null; }
    }

    /// <summary>A read-only SAS URL valid for the configured lifetime, or null when this client cannot sign one.</summary>
    public async Task<string?> GetReadUrlAsync(string id, CancellationToken ct)
    {
        var blob = Blob(id);
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
