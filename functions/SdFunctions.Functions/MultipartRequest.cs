using Microsoft.AspNetCore.Http;
using SdFunctions.Jobs;

namespace SdFunctions.Functions;

/// <summary>
/// POST /api/generations as multipart/form-data: a <c>request</c> part (the JSON body, as a field or a file) and an <c>image</c>
/// file part (the init picture). Anything else in the form is refused by name.
/// </summary>
internal static class MultipartRequest
{
    public const string RequestPart = "request", ImagePart = "image";

    public static async Task<(byte[] Json, ImageUpload? Image)> ReadAsync(IFormCollection form, CancellationToken ct)
    {
        var unknown = form.Keys.Concat(form.Files.Select(f => f.Name)).Where(n => n is not (RequestPart or ImagePart)).Distinct().ToList();
        if (unknown.Count > 0) throw Invalid(unknown[0], $"Unknown part. A multipart request has a '{RequestPart}' part (JSON) and an '{ImagePart}' part.");
        if (form.Files.GetFiles(ImagePart).Count > 1 || form.Files.GetFiles(RequestPart).Count + form[RequestPart].Count > 1)
            throw Invalid(ImagePart, "Each part may appear once.");

        byte[] json;
        if (form.Files.GetFile(RequestPart) is { } requestFile) json = await ReadAsync(requestFile, ct);
        else if (form[RequestPart] is { Count: 1 } field) json = System.Text.Encoding.UTF8.GetBytes(field[0] ?? "");
        else throw Invalid(RequestPart, "The request part (the JSON body) is missing.");

        ImageUpload? image = null;
        if (form.Files.GetFile(ImagePart) is { } imageFile)
            image = new ImageUpload(await ReadAsync(imageFile, ct), imageFile.ContentType is { Length: > 0 } t ? t.Split(';')[0].Trim().ToLowerInvariant() : null);
        else if (form.ContainsKey(ImagePart)) throw Invalid(ImagePart, "The image must be a file part (with a filename), not a text field.");
        return (json, image);
    }

    private static async Task<byte[]> ReadAsync(IFormFile file, CancellationToken ct)
    {
        using var buffer = new MemoryStream((int)file.Length);
        await file.CopyToAsync(buffer, ct);
        return buffer.ToArray();
    }

    private static ProblemException Invalid(string field, string message) => new(new Problem
    {
        Type = ProblemTypes.Validation, Title = "Invalid request", Status = 400, Detail = message,
        Errors = new Dictionary<string, string[]> { [field] = [message] },
    });
}
